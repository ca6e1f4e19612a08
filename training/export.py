"""What a finished run writes: the two LoRA files (masks baked into lora_up) and the bundle (mergers, masks)."""

from __future__ import annotations

from dataclasses import asdict

from ..unziplora.columns import effective_mask
from ..unziplora.lora_files import RunInfo, save_unziplora, unique_name

BUNDLE_EXT = ".safetensors"


def output_names(dirs, name: str, reserved=()) -> str:
    """The first name free for both LoRA files and the bundle, and not promised to a queued job."""
    return unique_name(dirs.loras, name, also=[(dirs.bundles, BUNDLE_EXT)], reserved=set(reserved) - {None})


def split_run(lora):
    """({path: (down, baked up)} per side, mergers per side, masks per side) as CPU fp32 tensors."""
    factors = {"content": {}, "style": {}}
    mergers = {"content": {}, "style": {}}
    masks = {"content": {}, "style": {}}
    for path, _block, dual in lora.items():
        for side_name, side in dual.sides():
            factors[side_name][path] = (side.down.detach().float().cpu(), side.baked_up().detach().float().cpu())
            mergers[side_name][path] = side.merger.detach().float().cpu()
            masks[side_name][path] = effective_mask(side).detach().bool().cpu()
    return factors, mergers, masks


def export_run(result, config, dirs, name: str, inputs, base_name: str = "") -> dict:
    factors, mergers, masks = split_run(result.lora)
    info = RunInfo(prompt=inputs.info.get("prompt", ""), content_prompt=inputs.info.get("content_prompt", ""),
                   style_prompt=inputs.info.get("style_prompt", ""), mode=config.mode,
                   hyperparameters=asdict(config), steps_done=result.steps_done, base_model_name=base_name,
                   base_model_hash=inputs.base_fingerprint, resolution=config.resolution)
    saved = save_unziplora(dirs.loras, name, factors["content"], factors["style"], info, mergers=mergers,
                           masks=masks, bundle_directory=dirs.bundles)
    return {"name": saved.name, "content": saved.content, "style": saved.style, "bundle": saved.bundle}
