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


# What the base model predicts, in each writer's words: a LoRA trained on a v-prediction (or zero-terminal-SNR)
# model learnt that model's target and must be used on one like it. kohya sd-scripts writes ss_v_parameterization
# and ss_zero_terminal_snr as str() of a bool; the SAI model spec has modelspec.prediction_type ("epsilon" | "v")
# and no key for the schedule; unziplora.* repeats both for the pack's own reader.
_MODELSPEC_PREDICTION = {"eps": "epsilon", "v": "v"}
PREDICTION_WORDS = {"eps": "epsilon (noise) prediction", "v": "v-prediction"}


def prediction_metadata(info) -> dict[str, str]:
    """The prediction-type keys of a file, when the run knows its base model's (info.prediction "eps" | "v")."""
    if info.prediction not in _MODELSPEC_PREDICTION:
        return {}
    zsnr = bool(info.zero_terminal_snr)
    return {"modelspec.prediction_type": _MODELSPEC_PREDICTION[info.prediction],
            "ss_v_parameterization": str(info.prediction == "v"), "ss_zero_terminal_snr": str(zsnr),
            "unziplora.prediction": info.prediction, "unziplora.zero_terminal_snr": str(zsnr).lower()}


def _flag(value) -> bool | None:
    text = str(value).strip().lower() if value is not None else ""
    return True if text in ("true", "1") else False if text in ("false", "0") else None


def prediction_of(metadata) -> tuple[str, bool | None]:
    """("eps" | "v" | "", zero terminal SNR or None if unsaid) from a file's metadata: ours, then the model
    spec's, then kohya's keys."""
    metadata = metadata or {}
    prediction = metadata.get("unziplora.prediction", "")
    if prediction not in PREDICTION_WORDS:
        prediction = {"epsilon": "eps", "v": "v", "v_prediction": "v"}.get(
            str(metadata.get("modelspec.prediction_type", "")).strip().lower(), "")
    if not prediction:
        v = _flag(metadata.get("ss_v_parameterization"))
        prediction = "" if v is None else "v" if v else "eps"
    zsnr = _flag(metadata.get("unziplora.zero_terminal_snr", metadata.get("ss_zero_terminal_snr")))
    return prediction, zsnr


def describe_prediction(metadata) -> str:
    """'v-prediction, zero terminal SNR' / 'epsilon (noise) prediction' / '' when the file does not say."""
    prediction, zsnr = prediction_of(metadata)
    if not prediction:
        return ""
    return PREDICTION_WORDS[prediction] + (", zero terminal SNR" if zsnr else "")
