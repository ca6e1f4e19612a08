"""What a LoRA file says about itself beyond the weights: thumbnail, usage hint, kohya's run keys.

Model browsers (ComfyUI's model library, SwarmUI, A1111/Forge's LoRA cards, Civitai's uploader) show these.
Formats follow their writers: the SAI model spec for modelspec.* (thumbnail = a small square JPEG data URI,
256x256 recommended) and kohya sd-scripts for ss_* (unix start time, str() of the resolution tuple,
{folder: {n_repeats, img_count}} as JSON). `info` is a lora_files.RunInfo (duck-typed: no import cycle).
"""

from __future__ import annotations

import json

import torch

THUMBNAIL_SIZE = 256  # the model spec's recommended (square) size


def thumbnail_data_uri(image, size: int = THUMBNAIL_SIZE, quality: int = 85) -> str:
    """A square JPEG data URI (modelspec.thumbnail: "data:image/jpeg;base64,...") from an HxWx3 image.

    image: a PIL image, a uint8 array or a float array/tensor in 0..1. Centre-cropped to a square, then resized:
    model browsers show thumbnails square, and a squashed image misleads more than a cropped one.
    """
    import base64
    import io

    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        image = Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr)
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def usage_hint(role: str, info) -> str:
    trigger = info.trigger(role)
    other = "style" if role == "content" else "content"
    alone = ("put it in the prompt with a new scene or style" if role == "content"
             else "put it in the prompt with a new subject")
    return (f"Trigger: {trigger}. Alone: strength 1, {alone}. Together with its {other} LoRA: the pack's "
            "UnZipLoRA Loader + Apply (both) + Prompts.")


def describe_run(info) -> dict[str, str]:
    """kohya's run keys (A1111/Forge's LoRA card, Civitai's uploader read them), where we know their values."""
    meta = {}
    if info.training_started_at is not None:
        meta["ss_training_started_at"] = repr(float(info.training_started_at))
    if info.resolution:
        meta["ss_resolution"] = f"({int(info.resolution)}, {int(info.resolution)})"  # str() of kohya's tuple
    meta["ss_dataset_dirs"] = json.dumps({info.dataset_name or "unziplora": {"n_repeats": 1,
                                                                             "img_count": int(info.images)}})
    if info.author:
        meta["modelspec.author"] = info.author
    return meta
