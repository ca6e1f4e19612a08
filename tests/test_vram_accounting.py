"""A training job's GPU memory in ComfyUI's own planning (training/vram.py), on the CPU with a fake card size.

ComfyUI's load_models_gpu plans with extra_reserved_memory() and minimum_inference_memory(); while a job
runs both must include the part of the job's bytes ComfyUI cannot see, and nothing of it after the job."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_conditioning

from unziplora_pack.training import vram
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.data import LatentPosteriors, PromptStreams
from unziplora_pack.training.jobs import JobManager
from unziplora_pack.training.loop import Trainer, TrainInputs
from unziplora_pack.training.model_copy import private_unet_copy
from unziplora_pack.training.service import OutputDirs, TrainingService

GiB = 1024**3


@pytest.fixture
def mm():
    import comfy.model_management as mm

    base = mm.EXTRA_RESERVED_VRAM
    yield mm
    assert mm.EXTRA_RESERVED_VRAM == base, "a test left memory reserved"


@pytest.fixture
def fake_card(monkeypatch, mm):
    """The CPU job is accounted as a GPU one would be, on a card whose size the test sets."""
    card = {"total": 24 * GiB}
    monkeypatch.setattr(vram, "accounts_for", lambda device: True)
    monkeypatch.setattr(mm, "get_total_memory", lambda dev=None, torch_total_too=False: card["total"])
    return card


def _inputs(tiny_sdxl):
    unet, fp = private_unet_copy(tiny_sdxl)
    x, pooled = random_conditioning(1)
    g = torch.Generator().manual_seed(4)
    post = LatentPosteriors(torch.randn(1, 4, 8, 8, generator=g), torch.full((1, 4, 8, 8), 0.1))
    adm = tiny_sdxl.model.encode_adm(pooled_output=pooled, width=64, height=64, crop_w=0, crop_h=0,
                                     target_width=64, target_height=64)
    return TrainInputs(unet=unet, streams=PromptStreams(x, x, x, pooled), posteriors=post,
                       adm=adm.detach().clone(), base_fingerprint=fp, info={"prompt": "p"})


def _service(tmp_path, emit=None):
    dirs = OutputDirs(*(str(tmp_path / d) for d in ("loras", "bundles", "checkpoints")))
    return TrainingService(JobManager(None, emit=emit), dirs, device=torch.device("cpu"))


CFG = TrainConfig(steps=3, rank=2, resolution=64, sample_times=1, checkpoint_every=0, seed=1)


def test_reservation_is_in_comfyui_planning_until_released(mm):
    base_extra, base_min = mm.extra_reserved_memory(), mm.minimum_inference_memory()
    held = {"n": 0}
    r = vram.VramReservation(torch.device("cuda", 0), 6 * GiB, held=lambda: held["n"])
    with r:
        assert mm.extra_reserved_memory() == base_extra + 6 * GiB
        assert mm.minimum_inference_memory() == base_min + 6 * GiB
        held["n"] = 5 * GiB  # the weights went to the card: they now show as used, so less is reserved
        r.update()
        assert mm.extra_reserved_memory() == base_extra + 1 * GiB
    assert mm.extra_reserved_memory() == base_extra
    with pytest.raises(RuntimeError, match="boom"):
        with vram.VramReservation(torch.device("cuda", 0), 2 * GiB):
            assert mm.extra_reserved_memory() == base_extra + 2 * GiB
            raise RuntimeError("boom")
    assert mm.extra_reserved_memory() == base_extra


def test_running_job_is_seen_by_comfyui_and_released_when_done(tiny_sdxl, tmp_path, mm, fake_card, monkeypatch):
    budget = 6 * GiB
    monkeypatch.setattr(vram, "estimate_job_bytes", lambda *a, **k: budget)
    base = mm.extra_reserved_memory()
    seen = []

    def emit(event, data):
        if data["job"]["state"] == "running" and data["kind"] == "progress":
            seen.append(mm.extra_reserved_memory() - base)

    inputs = _inputs(tiny_sdxl)
    weights = vram.tensor_bytes_on(inputs.unet, torch.device("cpu"))
    svc = _service(tmp_path, emit)
    job = svc.manager.wait(svc.start(inputs, CFG, "acct").id, timeout=240)
    assert job.state == "done", job.error
    assert seen and all(s == budget - weights for s in seen), (seen, budget - weights)
    assert mm.extra_reserved_memory() == base
    assert job.info["gpu_estimate"] == budget and job.info["gpu_warning"] is None


def test_failed_job_releases_its_reservation(tiny_sdxl, tmp_path, mm, fake_card, monkeypatch):
    monkeypatch.setattr(vram, "estimate_job_bytes", lambda *a, **k: 3 * GiB)
    base = mm.extra_reserved_memory()
    during = {}

    def run(self, **kwargs):
        during["extra"] = mm.extra_reserved_memory() - base
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Trainer, "run", run)
    svc = _service(tmp_path)
    job = svc.manager.wait(svc.start(_inputs(tiny_sdxl), CFG, "fail").id, timeout=120)
    assert job.state == "failed" and "out of memory" in job.error  # explained by training/faults.py
    assert during["extra"] > 0
    assert mm.extra_reserved_memory() == base


def test_card_too_small_for_the_weights_fails_the_job_with_the_numbers(tiny_sdxl, tmp_path, mm, fake_card):
    fake_card["total"] = 2 * 1024**2  # the tiny UNet's fp32 weights are larger
    base = mm.extra_reserved_memory()
    svc = _service(tmp_path)
    job = svc.manager.wait(svc.start(_inputs(tiny_sdxl), CFG, "small").id, timeout=120)
    assert job.state == "failed"
    assert "weights alone need" in job.error and "the GPU has 0.0 GiB" in job.error
    assert mm.extra_reserved_memory() == base


def test_card_smaller_than_the_estimated_peak_warns_and_trains(tiny_sdxl, tmp_path, mm, fake_card, monkeypatch):
    monkeypatch.setattr(vram, "estimate_job_bytes", lambda *a, **k: 10 * GiB)
    fake_card["total"] = 8 * GiB
    svc = _service(tmp_path)
    job = svc.manager.wait(svc.start(_inputs(tiny_sdxl), CFG, "peak").id, timeout=240)
    assert job.state == "done", job.error
    w = job.info["gpu_warning"]
    assert "needs about 10.0 GiB" in w and "has 8.0 GiB" in w and "resolution" in w


def test_card_too_small_for_both_warns_on_the_job_and_trains(tiny_sdxl, tmp_path, mm, fake_card, monkeypatch):
    monkeypatch.setattr(vram, "estimate_job_bytes", lambda *a, **k: 7 * GiB)
    fake_card["total"] = 8 * GiB  # 1 GiB left: less than ComfyUI's minimum inference memory + a workspace
    svc = _service(tmp_path)
    job = svc.manager.wait(svc.start(_inputs(tiny_sdxl), CFG, "tight").id, timeout=240)
    assert job.state == "done", job.error
    assert "GPU memory is tight" in job.info["gpu_warning"] and "offloaded" in job.info["gpu_warning"]


def test_cpu_jobs_are_not_accounted(tiny_sdxl, tmp_path, mm):
    svc = _service(tmp_path)
    job = svc.manager.wait(svc.start(_inputs(tiny_sdxl), CFG, "cpu").id, timeout=240)
    assert job.state == "done", job.error
    assert "gpu_estimate" not in job.info


def test_estimate_scales_with_resolution_and_checkpointing(tiny_sdxl):
    unet = tiny_sdxl.model.diffusion_model
    small = vram.estimate_job_bytes(unet, 512, torch.bfloat16, True)
    big = vram.estimate_job_bytes(unet, 1024, torch.bfloat16, True)
    no_ckpt = vram.estimate_job_bytes(unet, 1024, torch.bfloat16, False)
    assert small < big < no_ckpt
    weights = sum(p.numel() for p in unet.parameters()) * 2
    assert big > weights
