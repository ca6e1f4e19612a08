"""Trained-looking runs without training: a ContentStyleLoRA with random factors, mergers and masks, saved the way
training/export.py saves a finished run. Shared by test_apply.py, test_pair_files.py and test_apply_server.py."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from unziplora_pack.training.export import split_run
from unziplora_pack.unziplora import lora_files as LF
from unziplora_pack.unziplora import lora_formats as LR
from unziplora_pack.unziplora.content_style import ContentStyleLoRA


def info(**overrides) -> LF.RunInfo:
    base = dict(prompt="A sks cat in sketch style", content_prompt="A sks cat", style_prompt="A cat in sketch style",
                content_trigger="sks cat", style_trigger="sketch style", mode="unziplora")
    base.update(overrides)
    return LF.RunInfo(**base)


def random_lora(model, seed: int, rank: int = 4) -> ContentStyleLoRA:
    """Masks on, ~half the columns selected, mergers in [0.2, 1]: every part of the saved files matters."""
    lora = ContentStyleLoRA(model, "unziplora", rank=rank, seed=seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for _, f in lora._sides():
            # deltas the size of the base weights (a trained LoRA's order), not the init's 10x: a random tiny UNet
            # that far from its weights amplifies fp32 rounding to 1e-4 between any two summation orders
            f.down.mul_(0.3)
            f.up.mul_(0.3)
            f.merger.copy_(0.2 + 0.8 * torch.rand(f.merger.shape, generator=g))
            f.mask.copy_((torch.rand(f.mask.shape, generator=g) < 0.5).float())
    lora.set_masks_on(True)
    return lora


def save_lora(lora: ContentStyleLoRA, directory, name: str, bundle_directory=None, dtype=torch.float32, **kw):
    """bundle_directory: where the bundle goes (the pack's models/unziplora); default: beside the LoRAs, where
    pairs.from_bundle finds them without being told the LoRA folders."""
    factors, mergers, masks = split_run(lora)
    return LF.save_unziplora(str(directory), name, factors["content"], factors["style"], info(**kw), mergers=mergers,
                             masks=masks, dtype=dtype, bundle_directory=str(bundle_directory or directory))


def save_random_run(directory, name: str, shapes: dict, seed: int, rank: int = 4, bundle_directory=None, **kw):
    """A run for a model we do not build in-process (the server's checkpoint): plain random tensors per layer.
    bundle_directory as save_lora's."""
    g = torch.Generator().manual_seed(seed)
    sides = {s: {p: (torch.randn(rank, i, generator=g) * 0.05, torch.randn(o, rank, generator=g) * 0.05)
                 for p, (i, o) in sorted(shapes.items())} for s in LF.SIDES}
    mergers = {s: {p: 0.5 + 0.5 * torch.rand(o, generator=g) for p, (_, o) in shapes.items()} for s in LF.SIDES}
    masks = {s: {p: torch.ones(o) for p, (_, o) in shapes.items()} for s in LF.SIDES}
    return LF.save_unziplora(str(directory), name, sides["content"], sides["style"], info(**kw), mergers=mergers,
                             masks=masks, bundle_directory=str(bundle_directory or directory))


def attention_shapes(unet_config: Mapping | None = None) -> dict[str, tuple[int, int]]:
    """{ldm path: (in, out)} of every attention linear for a UNet config (default: SDXL base, 560 linears), computed
    from the config alone: the reference the readers' shape checks are tested against."""
    cfg = dict(unet_config or LR.SDXL_UNET_CONFIG)
    mult, ch, ctx = cfg["channel_mult"], cfg["model_channels"], cfg["context_dim"]
    shapes = {}
    for diff, ldm in LR.name_table(cfg).diffusers_to_ldm.items():
        if not LR.is_attention_target(ldm):
            continue
        top, level = diff.split(".")[:2]
        level = len(mult) - 1 if top == "mid_block" else int(level) if top == "down_blocks" else len(mult) - 1 - int(level)
        width = ch * mult[level]
        shapes[ldm] = (ctx if ldm.endswith(LR.CROSS_KV) else width, width)
    return shapes
