"""A training job's host RAM (issue 23): bounded by the UNet's size, and refused up front when the host lacks it.

The first full-size CPU run grew ComfyUI by 16 GB before step 1 and was OOM-killed: on the CPU the trainer cast
the bf16 copy of the UNet to fp32 (twice its bytes, with both alive during the cast). The copy is now made once,
weight by weight, in the dtype and on the device the job trains in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unziplora_pack.training import host_ram, prepare
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.loop import pick_precision
from unziplora_pack.training.model_copy import private_unet_copy

REPO = Path(__file__).resolve().parents[1]
GB = 1e9


def test_job_host_ram_growth_is_bounded_by_the_unet_size():
    """The job's path in a fresh process (bench/fullsize_ram.py) on the tiny checkpoint's 160 M-parameter UNet,
    held in bf16 as ComfyUI --bf16-unet holds it: copy, set-up, one step. What the job adds may be the copy
    (1x the UNet's bytes) plus the LoRA side plus a small fixed allowance; a second copy or an fp32 cast of the
    copy (2x more) cannot fit under it."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "fullsize_ram.py"), "--size", "medium", "--rank", "8",
                          "--res", "64", "--steps", "1", "--precision", "auto"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    lora_side = 2 * r["lora_bytes"] + r["optimizer_bytes"]  # parameters, gradients, optimiser moments
    bound = r["weight_bytes"] + lora_side + 0.2 * GB
    assert r["growth_peak"] <= bound, (
        f"the job grew host RAM by {r['growth_peak'] / GB:.2f} GB = {r['growth_ratio']} x the UNet's "
        f"{r['weight_bytes'] / GB:.2f} GB; allowed {bound / GB:.2f} GB (stages: {r['rows']})")
    assert r["compute_dtype"] == "torch.bfloat16"  # auto on a bf16 model trains in bf16 on the CPU
    assert r["copy_bytes"] == r["weight_bytes"]
    # the pre-check's estimate is an upper bound of what was measured
    assert r["growth_peak"] <= r["estimate"], (r["growth_peak"], r["estimate"])


@pytest.mark.parametrize("precision, weights, expected", [
    ("auto", torch.bfloat16, torch.bfloat16),  # ComfyUI --bf16-unet: keep the copy at the model's width
    ("auto", torch.float32, torch.float32),
    ("auto", torch.float16, torch.float32),
    ("bf16", torch.float32, torch.bfloat16),  # asked for: honoured on the CPU too (it was forced to fp32)
    ("bf16", torch.bfloat16, torch.bfloat16),
    ("fp32", torch.bfloat16, torch.float32),
])
def test_cpu_precision_does_not_widen_a_bf16_model(precision, weights, expected):
    config = TrainConfig(precision=precision)
    assert pick_precision(config, torch.device("cpu"), weights) == (expected, False)


def test_copy_is_made_in_the_training_dtype_with_the_same_fingerprint(tiny_sdxl):
    plain, fp_plain = private_unet_copy(tiny_sdxl)
    narrow, fp_narrow = private_unet_copy(tiny_sdxl, dtype=torch.bfloat16)
    assert fp_narrow == fp_plain  # the base model's identity does not depend on the dtype trained in
    narrow_sd, plain_sd = narrow.state_dict(), plain.state_dict()
    assert {t.dtype for t in narrow_sd.values() if t.is_floating_point()} == {torch.bfloat16}
    for name, t in plain_sd.items():
        assert torch.equal(narrow_sd[name], t.to(narrow_sd[name].dtype)), name


def test_copy_goes_to_its_device_weight_by_weight(tiny_sdxl, monkeypatch):
    """Every weight leaves the live model straight for the copy's device (meta here, standing for a card): none
    is staged as a host tensor on the way."""
    from unziplora_pack.training import model_copy

    made = []
    real = model_copy._fresh

    def spy(*args, **kwargs):
        t = real(*args, **kwargs)
        made.append(t.device.type)
        return t

    monkeypatch.setattr(model_copy, "_fresh", spy)
    unet, _ = private_unet_copy(tiny_sdxl, dtype=torch.bfloat16, device="meta")
    assert made and set(made) == {"meta"}
    assert {t.device.type for t in unet.state_dict().values()} == {"meta"}


def test_copy_plan_puts_the_copy_where_the_job_trains(tiny_sdxl):
    bf16 = TrainConfig(precision="bf16")
    assert prepare.copy_plan(tiny_sdxl, bf16, torch.device("cuda", 1)) == (torch.device("cuda", 1), torch.bfloat16)
    assert prepare.copy_plan(tiny_sdxl, TrainConfig(), torch.device("cpu")) == (torch.device("cpu"), torch.float32)
    assert prepare.copy_plan(tiny_sdxl, bf16, torch.device("cpu")) == (torch.device("cpu"), torch.bfloat16)


# --- the pre-check ----------------------------------------------------------------------------------------

def _refuse_copy(monkeypatch):
    copies = []
    monkeypatch.setattr(prepare, "private_unet_copy", lambda *a, **k: copies.append(1))
    return copies


def test_a_job_the_host_cannot_hold_is_refused_before_anything_is_copied(tiny_sdxl, monkeypatch):
    monkeypatch.setattr(host_ram, "available_bytes", lambda: int(0.3 * GB))
    copies = _refuse_copy(monkeypatch)
    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(MemoryError) as e:
        prepare.prepare_inputs(tiny_sdxl, None, None, image, "a", "b", "c", TrainConfig(steps=4, sample_times=2),
                               device="cpu")
    msg = str(e.value)
    assert "not enough host memory to train on the CPU" in msg
    assert "0.3 GB is available" in msg and "the model's private copy" in msg
    assert "precision bf16" in msg and host_ram.CHECK_ENV in msg
    assert copies == []


def test_a_job_that_fits_passes_the_check(tiny_sdxl, monkeypatch):
    monkeypatch.setattr(host_ram, "available_bytes", lambda: int(64 * GB))
    with pytest.raises(ValueError, match="clip is missing"):  # got past the check, to the next input
        prepare.prepare_inputs(tiny_sdxl, None, None, torch.rand(1, 64, 64, 3), "a", "b", "c",
                               TrainConfig(steps=4, sample_times=2), device="cpu")


def test_the_check_can_be_turned_off(tiny_sdxl, monkeypatch):
    monkeypatch.setattr(host_ram, "available_bytes", lambda: 0)
    monkeypatch.setenv(host_ram.CHECK_ENV, "off")
    with pytest.raises(ValueError, match="clip is missing"):
        prepare.prepare_inputs(tiny_sdxl, None, None, torch.rand(1, 64, 64, 3), "a", "b", "c",
                               TrainConfig(steps=4, sample_times=2), device="cpu")


def test_full_size_estimates():
    """Full-size SDXL (2.57 B parameters, 560 linears), paper mode, rank 64, 256 px: on the CPU in bf16 the job
    needs the 5.1 GB copy plus its LoRA side and activations; on a CUDA card only one weight passes the host."""
    from unziplora_pack.unziplora.roles import get_mode
    from unziplora_pack.unziplora.targets import AttnTarget

    # SDXL's 70 transformer blocks by width: input levels 1-2 (2 and 20 blocks), middle 10, output 30 + 6 + ...
    widths = [640] * 4 + [1280] * 20 + [1280] * 10 + [1280] * 30 + [640] * 6
    targets = []
    for i, w in enumerate(widths):
        for attention in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                fin = 2048 if attention == "attn2" and proj in ("to_k", "to_v") else w
                targets.append(AttnTarget(f"b{i}.{attention}.{proj}", f"b{i}", ("input", i, 0), attention, proj, fin, w))
    assert len(targets) == 560
    mode = get_mode("naive")  # both LoRAs on every linear: the most LoRA parameters any mode has
    lora = host_ram.lora_parameters(targets, mode, 64)
    cpu = host_ram.estimate(2_567_463_684, 0, torch.bfloat16, lora, "adamw", 256, on_host=True)
    assert 5.1 * GB < cpu.copy < 5.2 * GB
    assert cpu.total < 16 * GB  # fits a 24 GB machine beside a 5 GB live model
    assert host_ram.refusal(cpu, int(8 * GB), torch.device("cpu")).startswith("not enough host memory")
    gpu = host_ram.estimate(2_567_463_684, 26_214_400, torch.bfloat16, lora, "adamw", 1024, on_host=False)
    assert gpu.total < 1 * GB and gpu.lora == 0 and gpu.activations == 0
    assert host_ram.refusal(gpu, int(2 * GB), torch.device("cuda")) is None


def test_freed_arena_memory_goes_back_to_the_system():
    """Tensors under glibc's mmap threshold come from the thread's malloc arena; freed, they stay with the process
    (MemAvailable does not see them) until return_freed_memory() trims the arenas."""
    import gc
    import threading

    if not host_ram.return_freed_memory():
        pytest.skip("no glibc malloc_trim here")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    pins = []

    def work():  # as the trainer thread does: large blocks freed, then many SDXL-sized weights
        big = torch.empty(32_000_000 // 4)
        del big
        held = []
        for _ in range(1000):  # 2 MB each, 2 GB, each followed by a small block that outlives it (as a job's
            held.append(torch.ones(500_000))  # long-lived small objects do): the freed weights cannot merge into
            pins.append(torch.ones(16))  # the arena's top, so glibc keeps them whichever arena the thread got
        del held

    baseline = rss()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    gc.collect()
    before = rss()
    assert before - baseline > 1.5e9, f"RSS {baseline / 1e9:.2f} -> {before / 1e9:.2f} GB: the freed weights were " \
        "returned without a trim here (not glibc's arenas?), so this test shows nothing"
    assert host_ram.return_freed_memory()
    assert before - rss() > 0.5e9, f"RSS {before / 1e9:.2f} -> {rss() / 1e9:.2f} GB: the freed weights stayed"


def test_the_check_returns_freed_memory_before_reading_what_is_available(monkeypatch):
    calls = []
    monkeypatch.setattr(host_ram, "return_freed_memory", lambda: calls.append("trim") or True)
    monkeypatch.setattr(host_ram, "available_bytes", lambda: calls.append("read") or 100 * host_ram.GB)
    host_ram.check(host_ram.HostEstimate(copy=1, lora=1, activations=1), torch.device("cpu"), environ={})
    assert calls == ["trim", "read"]


def test_the_job_manager_tidies_memory_before_it_announces_a_job_end(tmp_path):
    from unziplora_pack.training.jobs import JobManager

    order = []
    manager = JobManager(str(tmp_path / "jobs.json"), after_job=lambda: order.append("tidy"),
                         emit=lambda _e, d: order.append(d["job"]["state"]) if d["kind"] == "state" else None)
    job = manager.submit("x", lambda ctx: {})
    manager.wait(job.id, 30)
    assert order[-2:] == ["tidy", "done"], order
