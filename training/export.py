"""What a finished run writes: the two LoRA files (masks baked into lora_up) and the bundle (mergers, masks)."""

from __future__ import annotations

import glob
import os
from dataclasses import asdict

from ..unziplora.columns import effective_mask
from ..unziplora.lora_files import BUNDLE_SUFFIX, RunInfo, save_unziplora, unique_name
from ..unziplora.model_card import thumbnail_data_uri

# modelspec.author of every file a run writes. A setting of the machine rather than a node input: it names the
# person running ComfyUI, the same for all their runs (and a node input would be saved into shared workflows).
AUTHOR_ENV = "UNZIPLORA_AUTHOR"
# which preview shows each file: a LoRA alone is previewed by its own side's sample, the bundle by the combined one
_PREVIEW_KIND = {"content": "content", "style": "style", "bundle": "combined"}


def output_names(dirs, name: str, reserved=()) -> str:
    """The first name free for both LoRA files and the bundle, and not promised to a queued job."""
    return unique_name(dirs.loras, name, also=[(dirs.bundles, BUNDLE_SUFFIX)], reserved=set(reserved) - {None})


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


def thumbnails(preview_dir: str | None, fallback) -> dict:
    """{"content"|"style"|"bundle": data URI}: the run's last preview of each kind, else the training image
    (what the pair learnt to recreate; runs without previews still get a recognisable thumbnail)."""
    out = {}
    for target, kind in _PREVIEW_KIND.items():
        found = sorted(glob.glob(os.path.join(glob.escape(preview_dir), f"step_*_{kind}.png"))) if preview_dir else []
        source = found[-1] if found else None
        try:
            if source:
                from PIL import Image

                with Image.open(source) as im:
                    out[target] = thumbnail_data_uri(im)
            elif fallback is not None:
                out[target] = thumbnail_data_uri(fallback)
        except (OSError, ValueError):
            pass  # a thumbnail is a nicety: an unreadable preview never fails the export of a finished run
    return out


def prediction_of_run(inputs) -> dict:
    """RunInfo's prediction fields from the run's objective (None: the trainer used SDXL's eps default)."""
    objective = getattr(inputs, "objective", None)
    if objective is None:
        return {"prediction": "eps", "zero_terminal_snr": False}
    return {"prediction": objective.prediction, "zero_terminal_snr": bool(objective.zsnr)}


def export_run(result, config, dirs, name: str, inputs, base_name: str = "", *, started_at: float | None = None,
               preview_dir: str | None = None, name_decided: bool = False) -> dict:
    """name_decided: `name` is the job's output name, chosen once at its start (output_names): written as is."""
    factors, mergers, masks = split_run(result.lora)
    info = RunInfo(prompt=inputs.info.get("prompt", ""), content_prompt=inputs.info.get("content_prompt", ""),
                   style_prompt=inputs.info.get("style_prompt", ""), mode=config.mode,
                   hyperparameters=asdict(config), steps_done=result.steps_done, base_model_name=base_name,
                   base_model_hash=inputs.base_fingerprint, resolution=config.resolution,
                   author=os.environ.get(AUTHOR_ENV, "").strip(), training_started_at=started_at,
                   images=int(inputs.info.get("images", 1)),
                   thumbnails=thumbnails(preview_dir, getattr(inputs, "thumbnail", None)),
                   **prediction_of_run(inputs))
    saved = save_unziplora(dirs.loras, name, factors["content"], factors["style"], info, mergers=mergers,
                           masks=masks, bundle_directory=dirs.bundles, exact=name_decided)
    return {"name": saved.name, "content": saved.content, "style": saved.style, "bundle": saved.bundle}
