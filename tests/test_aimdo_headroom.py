"""Dynamic VRAM's runtime headroom (issue 23): while a job runs on a dynamic-VRAM device, comfy-aimdo's
process-wide headroom is raised by what the job needs beyond what it holds; the exact value found before is put
back however the job ends. On the CPU with a stand-in comfy_aimdo of each shape:

  control  comfy-aimdo 0.5.5 / 0.6.0: control.set_simple_vram_headroom / control.get_simple_vram_headroom
  native   comfy-aimdo 0.4.13 (pinned by ComfyUI 0.33.0): only the native library's setter and its variable
  absent   older releases: neither (the job is then planned by EXTRA_RESERVED_VRAM alone)
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from test_vram_accounting import CFG, GiB, _inputs, _service, fake_card, mm  # noqa: F401 -- fixtures
from unziplora_pack.training import vram
from unziplora_pack.training.jobs import JobCancelled
from unziplora_pack.training.loop import Trainer
from unziplora_pack.unziplora import compat

BASE = 256 * 1024**2  # comfy-aimdo's own default (--reserve-vram unset)


class FakeAimdo:
    """comfy_aimdo + comfy_aimdo.control as one release shapes them; `history` is every value set."""

    def __init__(self, shape: str, value: int = BASE):
        self.shape, self.history = shape, []
        self.cell = ctypes.c_int64(value)
        pkg, control = types.ModuleType("comfy_aimdo"), types.ModuleType("comfy_aimdo.control")
        pkg.control = control

        def native_set(n):
            self.history.append(int(n))
            self.cell.value = int(n)

        if shape == "uninitialised":
            control.lib = None
        elif shape == "absent":
            control.lib = types.SimpleNamespace(set_nvml_pressure=lambda b: None)
        elif shape == "native":
            control.lib = types.SimpleNamespace(set_simple_vram_headroom=native_set, simple_vram_headroom=self.cell)
        elif shape == "control":
            control.lib = types.SimpleNamespace(set_simple_vram_headroom=native_set)  # the variable is not exported
            control.set_simple_vram_headroom = native_set
            control.get_simple_vram_headroom = lambda: int(self.cell.value)
        self.modules = {"comfy_aimdo": pkg, "comfy_aimdo.control": control}

    @property
    def value(self) -> int:
        return int(self.cell.value)


@pytest.fixture
def aimdo(monkeypatch, request):
    fake = FakeAimdo(request.param)
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


@pytest.fixture
def dynamic(monkeypatch, fake_card):  # noqa: F811
    """A job on ComfyUI's device under dynamic VRAM (the CPU job accounted as a GPU one, see fake_card)."""
    monkeypatch.setattr(compat, "dynamic_vram_enabled", lambda: True)
    yield
    assert not vram.HEADROOM.shares and vram.HEADROOM.base is None, "a job's headroom share was left behind"


@pytest.mark.parametrize("aimdo", ["control", "native", "absent", "uninitialised"], indirect=True)
def test_the_knob_of_each_comfy_aimdo_shape(aimdo):
    knob = compat.aimdo_headroom()
    if aimdo.shape in ("absent", "uninitialised"):
        assert knob is None
        return
    assert knob.source == aimdo.shape and knob.get() == BASE
    knob.set(3 * GiB)
    assert aimdo.value == 3 * GiB and knob.get() == 3 * GiB and aimdo.history == [3 * GiB]


def _installed_aimdo_library():
    spec = importlib.util.find_spec("comfy_aimdo")  # a namespace package: no __init__, no origin
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "aimdo.so").is_file():
            return Path(folder) / "aimdo.so"
    return None


@pytest.mark.skipif(_installed_aimdo_library() is None, reason="comfy-aimdo is not installed (host b installs it)")
def test_native_knob_reads_and_sets_the_real_library(monkeypatch):
    """The installed comfy-aimdo's own native library (0.4.13 with host b): the variable read through ctypes is the
    one its setter writes, so the value found before a job is the value put back. Loading it needs no GPU."""
    lib = ctypes.CDLL(str(_installed_aimdo_library()), mode=258)
    lib.set_simple_vram_headroom.argtypes = [ctypes.c_int64]
    control = types.ModuleType("comfy_aimdo.control")
    control.lib = lib  # as comfy_aimdo.control.init() leaves it, without the knob of 0.5.5+
    monkeypatch.setitem(sys.modules, "comfy_aimdo.control", control)
    knob = compat.aimdo_headroom()
    assert knob is not None and knob.source == "native"
    before = knob.get()
    try:
        knob.set(before + 5 * GiB)
        assert knob.get() == before + 5 * GiB
    finally:
        knob.set(before)
    assert knob.get() == before


# ------------------------------------------------------------------------------------------ jobs that end
def _during(monkeypatch, ending):
    """Trainer.run replaced by one that records the headroom, then ends the way `ending` says."""
    seen = {}

    def run(self, progress=None, should_stop=None, **kwargs):
        seen["headroom"] = compat.aimdo_headroom().get() if compat.aimdo_headroom() else None
        import comfy.model_management

        seen["reserve"] = int(comfy.model_management.extra_reserved_memory())
        if ending == "failed":
            raise RuntimeError("a bug in a step (simulated)")
        if ending == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        if ending == "cancelled":
            seen["waiting"] = True
            while not should_stop():
                time.sleep(0.01)
            raise JobCancelled()

    monkeypatch.setattr(Trainer, "run", run)
    return seen


@pytest.mark.parametrize("aimdo", ["control", "native"], indirect=True)
@pytest.mark.parametrize("ending", ["failed", "oom", "cancelled"])
def test_headroom_is_raised_while_the_job_runs_and_put_back_however_it_ends(tiny_sdxl, tmp_path, mm, dynamic, aimdo,
                                                                          monkeypatch, ending):
    budget = 6 * GiB
    monkeypatch.setattr(vram, "estimate_job_bytes", lambda *a, **k: budget)
    inputs = _inputs(tiny_sdxl)
    want = budget - vram.tensor_bytes_on(inputs.unet, torch.device("cpu"))
    base_reserve = mm.extra_reserved_memory()
    seen = _during(monkeypatch, ending)
    svc = _service(tmp_path)
    job = svc.start(inputs, CFG, ending)
    if ending == "cancelled":
        deadline = time.time() + 60
        while not seen.get("waiting") and time.time() < deadline:
            time.sleep(0.02)
        svc.manager.cancel(job.id)
    job = svc.manager.wait(job.id, timeout=120)
    assert job.state == ("cancelled" if ending == "cancelled" else "failed"), (job.state, job.error)
    assert seen["headroom"] == BASE + want  # dynamic VRAM keeps the job's unheld part free ...
    assert seen["reserve"] == base_reserve + want  # ... and the estimate path still reserves it
    assert aimdo.value == BASE and aimdo.history[-1] == BASE  # the exact value found before, put back
    assert mm.extra_reserved_memory() == base_reserve
    assert job.info["gpu_headroom"] == aimdo.shape
    assert (job.info["gpu_headroom_base"], job.info["gpu_headroom_peak"], job.info["gpu_headroom_after"]) == (
        BASE, BASE + want, BASE)  # what bench/gpu_check.py's headroom stage reads on a real card
    if ending == "oom":
        assert "out of memory" in job.error


@pytest.mark.parametrize("aimdo", ["control", "native"], indirect=True)
def test_two_jobs_in_a_row_do_not_accumulate(tiny_sdxl, tmp_path, mm, dynamic, aimdo, monkeypatch):
    """Real (tiny) training runs, one after the other: each raises from the same base and puts it back; a value
    --reserve-vram gave (here 1.5 GiB) is what comes back, not comfy-aimdo's default."""
    aimdo.cell.value = 1536 * 1024**2
    monkeypatch.setattr(vram, "estimate_job_bytes", lambda *a, **k: 4 * GiB)
    svc = _service(tmp_path)
    inputs = _inputs(tiny_sdxl)
    want = 4 * GiB - vram.tensor_bytes_on(inputs.unet, torch.device("cpu"))
    for name in ("first", "second"):  # each job its own copy, as Train gives it (a job frees its copy at its end)
        job = svc.manager.wait(svc.start(inputs if name == "first" else _inputs(tiny_sdxl), CFG, name).id,
                               timeout=240)
        assert job.state == "done", job.error
        assert aimdo.value == 1536 * 1024**2
    assert aimdo.history == [1536 * 1024**2 + want, 1536 * 1024**2] * 2


@pytest.mark.parametrize("aimdo", ["control"], indirect=True)
def test_overlapping_jobs_share_one_base_and_the_last_one_out_restores_it(aimdo, dynamic):
    """Two reservations alive at once (two jobs, or a job and a resume) add their shares to one base; whichever
    ends first leaves the other's share in place, the last puts the base back."""
    knob = compat.aimdo_headroom()
    a = vram.VramReservation(torch.device("cpu"), 3 * GiB, headroom=knob).start()
    b = vram.VramReservation(torch.device("cpu"), 2 * GiB, headroom=knob).start()
    assert aimdo.value == BASE + 5 * GiB
    a.release()
    assert aimdo.value == BASE + 2 * GiB
    a.release()  # a second release changes nothing
    assert aimdo.value == BASE + 2 * GiB
    b.release()
    assert aimdo.value == BASE


@pytest.mark.parametrize("aimdo", ["absent"], indirect=True)
def test_without_the_knob_the_job_is_planned_by_the_estimate_path_alone(tiny_sdxl, tmp_path, mm, dynamic, aimdo,
                                                                        monkeypatch):
    monkeypatch.setattr(vram, "estimate_job_bytes", lambda *a, **k: 3 * GiB)
    seen = _during(monkeypatch, "failed")
    base_reserve = mm.extra_reserved_memory()
    svc = _service(tmp_path)
    job = svc.manager.wait(svc.start(_inputs(tiny_sdxl), CFG, "absent").id, timeout=120)
    assert seen["headroom"] is None and seen["reserve"] > base_reserve
    assert job.info["gpu_headroom"] is None and mm.extra_reserved_memory() == base_reserve


@pytest.mark.parametrize("aimdo", ["control"], indirect=True)
def test_not_dynamic_or_not_comfyuis_device_leaves_the_knob_alone(aimdo, fake_card, monkeypatch):  # noqa: F811
    monkeypatch.setattr(compat, "dynamic_vram_enabled", lambda: False)
    assert vram.dynamic_headroom_knob(torch.device("cpu")) is None
    monkeypatch.setattr(compat, "dynamic_vram_enabled", lambda: True)
    assert vram.dynamic_headroom_knob(torch.device("cpu")) is not None  # ComfyUI's device here (--cpu)
    assert vram.dynamic_headroom_knob(torch.device("cuda", 1)) is None  # another card: the knob is process-wide
    assert aimdo.history == []


@pytest.mark.parametrize("aimdo", ["control"], indirect=True)
def test_a_knob_that_fails_to_set_does_not_fail_the_job(aimdo, dynamic, mm):
    def refuse(n):
        raise ValueError("simple_vram_headroom must be between 0 and 2**60 bytes")

    knob = compat.HeadroomKnob(get=lambda: BASE, set=refuse, source="control")
    base = mm.extra_reserved_memory()
    with vram.VramReservation(torch.device("cpu"), 2 * GiB, headroom=knob) as r:
        assert r.headroom is None and mm.extra_reserved_memory() == base + 2 * GiB
    assert mm.extra_reserved_memory() == base

