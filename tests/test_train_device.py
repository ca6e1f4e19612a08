"""Train on a chosen device (issue 23): the choices each host offers, the refusal of a device that is not there,
and the job's copy, reservation and previews on the chosen device. Run on host a (no multi-GPU helpers: the CUDA
devices torch sees) and on host b (0.33.0: core's get_gpu_device_options / resolve_gpu_device_option)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from test_bad_inputs_nodes import TRAIN_DEFAULTS, manager  # noqa: F401 -- fixture
from test_vram_accounting import CFG, _inputs, _service
from unziplora_pack.nodes import train
from unziplora_pack.nodes.train import UnZipLoRATrain
from unziplora_pack.training import vram
from unziplora_pack.training.loop import Trainer
from unziplora_pack.training.service import OutputDirs
from unziplora_pack.unziplora import compat


@pytest.fixture
def mm():
    import comfy.model_management as mm

    return mm


@pytest.fixture
def two_gpus(monkeypatch, mm):
    """A machine with two CUDA cards as each host's code sees it (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    if hasattr(mm, "get_all_torch_devices"):
        monkeypatch.setattr(mm, "get_all_torch_devices",
                            lambda exclude_current=False: [torch.device("cuda", 0), torch.device("cuda", 1)])


def test_choices_on_this_host_with_one_cpu(mm):
    assert compat.device_options() == ["default", "cpu"]
    assert compat.resolve_device("default") is None and compat.resolve_device(None) is None
    assert compat.resolve_device("cpu") == torch.device("cpu")


def test_choices_on_this_host_with_two_gpus(mm, two_gpus):
    options = compat.device_options()
    assert options == ["default", "cpu", "gpu:0", "gpu:1"]
    if hasattr(mm, "get_gpu_device_options"):  # host b: core's own list, the same labels SelectModelDevice shows
        assert options == mm.get_gpu_device_options()
    assert compat.resolve_device("gpu:1") == torch.device("cuda", 1)
    assert compat.resolve_device("gpu:0") == torch.device("cuda", 0)


def test_host_without_core_helpers_lists_every_cuda_device_torch_sees(mm, monkeypatch):
    """0.3.75 has no get_gpu_device_options: the fallback (here forced on either host) lists one card too."""
    monkeypatch.delattr(mm, "get_gpu_device_options", raising=False)
    monkeypatch.delattr(mm, "resolve_gpu_device_option", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert compat.device_options() == ["default", "cpu", "gpu:0"]
    assert compat.resolve_device("gpu:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"device: 'gpu:1' is not a device on this machine; choose one of "
                                         r"default, cpu, gpu:0"):
        compat.resolve_device("gpu:1")


def test_train_offers_the_hosts_choices_with_comfyuis_device_first(two_gpus):
    spec = {i.id: i for i in UnZipLoRATrain.define_schema().inputs}["device"]
    assert spec.optional and spec.default == "default"
    assert list(spec.options) == ["default", "cpu", "gpu:0", "gpu:1"]


@pytest.mark.parametrize("value", ["gpu:3", "cuda:0", "GPU:0", ""])
def test_a_device_that_is_not_there_is_refused_by_name_before_any_job(manager, value):  # noqa: F811
    with pytest.raises(ValueError) as e:
        UnZipLoRATrain.execute(**TRAIN_DEFAULTS, device=value)
    assert str(e.value) == f"device = {value!r} is not allowed: one of default, cpu"
    assert manager.list() == []


def test_the_chosen_device_reaches_the_room_making_and_the_job(monkeypatch, two_gpus):
    seen = {}

    class Service:
        manager = type("M", (), {"list": lambda self: []})()  # no earlier job to reuse (nodes/train_cache.py)

        def start(self, inputs, config, name, **kw):
            seen["start"] = kw["device"]
            raise RuntimeError("stop here")

    monkeypatch.setattr(train, "service", lambda: Service())
    monkeypatch.setattr(train, "prepare_inputs", lambda *a: type("I", (), {"unet": torch.nn.Linear(1, 1)})())
    monkeypatch.setattr(train, "make_room_for_training", lambda unet, device=None: seen.setdefault("room", device))
    monkeypatch.setattr(UnZipLoRATrain, "hidden", type("H", (), {"extra_pnginfo": None, "unique_id": "3",
                                                                 "prompt": None})(), raising=False)
    with pytest.raises(RuntimeError, match="stop here"):
        UnZipLoRATrain.execute(**TRAIN_DEFAULTS, device="gpu:1")
    assert seen == {"room": torch.device("cuda", 1), "start": torch.device("cuda", 1)}
    with pytest.raises(RuntimeError, match="stop here"):
        UnZipLoRATrain.execute(**TRAIN_DEFAULTS)  # default: the service picks ComfyUI's device
    assert seen["start"] is None


def test_job_trains_reserves_and_previews_on_its_own_device(tiny_sdxl, tmp_path, monkeypatch):
    """A service whose default is one device runs a job asked for another there: the Trainer, the reservation and
    the previews get the job's device, and a reservation for a device other than ComfyUI's raises nothing
    process-wide (the reserve and the headroom would shrink what prompts on ComfyUI's card may use)."""
    seen = {}

    def run(self, previews=None, **kwargs):
        seen["trainer"] = self.device
        raise RuntimeError("stop after the set-up")

    monkeypatch.setattr(Trainer, "run", run)
    monkeypatch.setattr(vram, "on_main_device", lambda device: torch.device(device).type == "cuda")
    real_reservation = vram.VramReservation

    def reservation(device, budget, held=lambda: 0, headroom=None, planned=True):
        seen["reservation"] = (torch.device(device), planned, headroom)
        return real_reservation(device, budget, held, headroom, planned)

    monkeypatch.setattr(vram, "accounts_for", lambda device: True)
    monkeypatch.setattr("unziplora_pack.training.service.VramReservation", reservation)

    class Renderer:
        def __init__(self, preview, inputs, config, objective, device, *rest, **hooks):
            seen["previews"] = device

    monkeypatch.setattr("unziplora_pack.training.service.PreviewRenderer", Renderer)
    import comfy.model_management as mm

    base = mm.EXTRA_RESERVED_VRAM
    svc = _service(tmp_path)
    svc.dirs = OutputDirs(*(str(tmp_path / d) for d in ("loras", "bundles", "checkpoints", "previews")))
    svc.device = torch.device("cuda", 0)  # the service's default; this job asks for the CPU
    inputs = _inputs(tiny_sdxl)
    inputs.preview = object()
    config = dataclasses.replace(CFG, preview_every=1)
    job = svc.manager.wait(svc.start(inputs, config, "dev", device=torch.device("cpu")).id, timeout=120)
    assert job.state == "failed" and "stop after the set-up" in job.error
    assert job.info["device"] == "cpu" and seen["trainer"] == torch.device("cpu")
    assert seen["previews"] == torch.device("cpu")
    assert seen["reservation"] == (torch.device("cpu"), False, None)
    assert job.info["gpu_reserved"] == 0 and mm.EXTRA_RESERVED_VRAM == base


class _Param:
    """What make_room_for_training reads of a parameter: its size and where it sits (no CUDA needed)."""

    def __init__(self, numel: int, element_size: int, device: torch.device):
        self._n, self._e, self.device = numel, element_size, device

    def numel(self):
        return self._n

    def element_size(self):
        return self._e


class _Copy:
    def __init__(self, *params):
        self._params = params

    def parameters(self):
        return iter(self._params)


@pytest.mark.parametrize("where, asked", [
    # a CUDA job's copy, made on its card by prepare_inputs (which made room for it first): only the job's
    # activations / optimiser state (2x the weights) are asked for, not the weights a second time
    (torch.device("cuda", 0), 2 * 3000),
    # the copy is somewhere else (the CPU, another card): its weights too
    (torch.device("cpu"), 3 * 3000),
    (torch.device("cuda", 1), 3 * 3000),
], ids=["copy-on-the-card", "copy-on-the-cpu", "copy-on-another-card"])
def test_room_for_training_counts_the_copy_already_on_the_card(monkeypatch, mm, where, asked):
    calls = []
    monkeypatch.setattr(mm, "free_memory", lambda need, device, *a, **k: calls.append((need, device)))
    monkeypatch.setattr(mm, "soft_empty_cache", lambda *a, **k: None)
    copy = _Copy(_Param(1000, 2, where), _Param(500, 2, where))  # 3000 bytes of bf16 weights
    train.make_room_for_training(copy, torch.device("cuda", 0))
    assert calls == [(asked, torch.device("cuda", 0))]


def test_room_for_training_leaves_a_cpu_job_alone(monkeypatch, mm):
    calls = []
    monkeypatch.setattr(mm, "free_memory", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cpu"))
    train.make_room_for_training(_Copy(_Param(1000, 4, torch.device("cpu"))))
    train.make_room_for_training(_Copy(_Param(1000, 4, torch.device("cpu"))), torch.device("cpu"))
    assert calls == []
