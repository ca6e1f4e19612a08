"""Train node presets: what each overrides, refusal of unknown names, selective checkpointing's layers."""

from __future__ import annotations

import pytest

from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.presets import PRESETS, apply_preset, preset_tooltip
from unziplora_pack.unziplora import checkpointing


def test_presets_override_only_memory_settings():
    paper = TrainConfig()
    assert apply_preset("auto", paper) == paper
    low = apply_preset("8gb", paper)
    assert (low.resolution, low.gradient_checkpointing, low.optimizer) == (768, "on", "low_memory")
    assert low.rank == paper.rank and low.lr_content == paper.lr_content and low.steps == paper.steps
    assert apply_preset("8gb", TrainConfig(resolution=512)).resolution == 512  # never raised
    assert apply_preset("16gb", paper).gradient_checkpointing == "selective"
    assert apply_preset("24gb", paper).gradient_checkpointing == "off"
    assert apply_preset("quick", paper).steps == 100
    tip = preset_tooltip()
    assert all(key in tip for key in PRESETS) and "GiB" in tip


def test_unknown_preset_names_the_input():
    with pytest.raises(ValueError, match=r"preset = 'huge' is not allowed: one of auto, 12gb"):
        apply_preset("huge", TrainConfig())


def test_selective_checkpointing_wraps_only_the_deep_blocks(tiny_sdxl):
    unet = tiny_sdxl.model.diffusion_model
    n = checkpointing.enable_checkpointing(unet, checkpointing.DEEP_BLOCKS)
    wrapped = [name for name, layer in checkpointing._named_block_layers(unet)
               if isinstance(layer, checkpointing._CheckpointedLayer)]
    assert n == len(wrapped) > 0
    assert all(name.startswith(tuple(b + "." for b in checkpointing.DEEP_BLOCKS)) for name in wrapped)
    assert "output_blocks.3.1" not in wrapped and "output_blocks.0.1" in wrapped
    assert checkpointing.disable_checkpointing(unet) == n
