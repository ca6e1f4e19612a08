"""Gradient checkpointing is decided by one function (checkpointing.checkpointing_mode); the loop applies that mode
and the VRAM estimate plans with it. Before: the estimate treated `selective` (the 16gb preset) as off."""

from __future__ import annotations

import types

import pytest
import torch

from unziplora_pack.training import service as service_mod
from unziplora_pack.training import vram
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.presets import apply_preset
from unziplora_pack.unziplora.checkpointing import DEEP_BLOCKS, checkpointing_mode

GiB = 1024**3
CUDA = torch.device("cuda")  # only a name here: nothing is put on it


@pytest.mark.parametrize("setting,device,mode", [
    ("auto", "cuda", "all"), ("auto", "cpu", "off"), ("on", "cpu", "all"), ("on", "cuda", "all"),
    ("selective", "cuda", "deep"), ("selective", "cpu", "deep"), ("off", "cuda", "off")])
def test_one_rule_from_setting_to_mode(setting, device, mode):
    assert checkpointing_mode(setting, torch.device(device)) == mode


def test_estimate_per_mode(tiny_sdxl):
    unet = tiny_sdxl.model.diffusion_model
    est = {m: vram.estimate_job_bytes(unet, 1024, torch.bfloat16, m) for m in ("all", "deep", "off")}
    assert est["all"] < est["deep"] < est["off"]
    weights = sum(p.numel() for p in unet.parameters()) * 2
    scale = sum(p.numel() for p in unet.parameters()) / vram.SDXL_PARAMS
    for mode, per_mpix in vram.ACTIVATION_BYTES_PER_MPIX.items():
        assert est[mode] == int(weights + per_mpix * scale + vram.LORA_ALLOWANCE)
    assert est["all"] == vram.estimate_job_bytes(unet, 1024, torch.bfloat16, True)
    assert est["off"] == vram.estimate_job_bytes(unet, 1024, torch.bfloat16, False)


class _Reservation:
    def __init__(self, device, budget, held, **_):  # headroom / planned: dynamic VRAM (issue 23)
        self.added = budget

    def start(self):
        return self


@pytest.mark.parametrize("preset,mode", [("12gb", "all"), ("16gb", "deep"), ("24gb", "off"), ("auto", "all")])
def test_the_job_plans_with_the_mode_the_loop_applies(tiny_sdxl, monkeypatch, preset, mode):
    """The 16gb preset's selective was planned (and warned about) as if nothing were checkpointed."""
    monkeypatch.setattr(vram, "accounts_for", lambda device: True)
    monkeypatch.setattr(vram, "device_total", lambda device: 80 * GiB)
    monkeypatch.setattr(vram, "fit_message", lambda budget, total, floor=0: (None, None))
    monkeypatch.setattr(service_mod, "VramReservation", _Reservation)
    config = apply_preset(preset, TrainConfig())
    unet = tiny_sdxl.model.diffusion_model
    trainer = types.SimpleNamespace(device=CUDA, dtype=torch.bfloat16,
                                    checkpointing=checkpointing_mode(config.gradient_checkpointing, CUDA))
    ctx = types.SimpleNamespace(job=types.SimpleNamespace(info={}))
    service_mod.gpu_reservation(ctx, trainer, types.SimpleNamespace(unet=unet), config)
    assert ctx.job.info["gpu_estimate"] == vram.estimate_job_bytes(unet, config.resolution, torch.bfloat16, mode,
                                                                   config.rank)


def test_the_loop_applies_the_mode(tiny_sdxl):
    from unziplora_pack.unziplora.checkpointing import _named_block_layers, apply_mode, disable_checkpointing

    unet = tiny_sdxl.model.diffusion_model
    try:
        assert apply_mode(unet, checkpointing_mode("selective", CUDA)) > 0
        wrapped = {n.rsplit(".", 1)[0] for n, layer in _named_block_layers(unet) if is_checkpointing_layer(layer)}
        assert wrapped and all(any(n == b or n.startswith(b + ".") for b in DEEP_BLOCKS) for n in wrapped)
        disable_checkpointing(unet)
        assert apply_mode(unet, "off") == 0 and not is_checkpointing(unet)
        with pytest.raises(ValueError, match="checkpointing mode 'some'"):
            apply_mode(unet, "some")
    finally:
        disable_checkpointing(unet)


def is_checkpointing_layer(layer) -> bool:
    from unziplora_pack.unziplora.checkpointing import _CheckpointedLayer

    return isinstance(layer, _CheckpointedLayer)


def is_checkpointing(unet) -> bool:
    """Any of the UNet's blocks wrapped for gradient checkpointing."""
    from unziplora_pack.unziplora.checkpointing import _named_block_layers

    return any(is_checkpointing_layer(layer) for _, layer in _named_block_layers(unet))
