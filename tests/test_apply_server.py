"""Using a trained pair in a live ComfyUI server: Loader -> Apply (both) -> Prompts -> KSampler makes an image, and
the checkpoint's model is left exactly as it was (a plain sample after it equals one before it)."""

from __future__ import annotations

import io
import time
import uuid

import pytest
from pair_helpers import attention_shapes, save_random_run

from comfy_server import _tiny_sdxl_module, events_of

pytestmark = pytest.mark.server


def _plain_graph(ckpt: str, prefix: str, seed: int, advanced: bool = False) -> dict:
    """A stock sample. advanced: KSamplerAdvanced set up to do exactly what KSampler does (same sigmas, same noise),
    so ComfyUI cannot answer it from its cache and really samples again."""
    sampler = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "cfg": 4.0,
               "steps": 2, "sampler_name": "euler", "scheduler": "normal"}
    if advanced:
        sampler.update(add_noise="enable", noise_seed=seed, start_at_step=0, end_at_step=10000,
                       return_with_leftover_noise="disable")
    else:
        sampler.update(seed=seed, denoise=1.0)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSamplerAdvanced" if advanced else "KSampler", "inputs": sampler},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def _pair_graph(ckpt: str, run: str, prefix: str, seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": run}},
        "3": {"class_type": "UnZipLoRAApply", "inputs": {"model": ["1", 0], "mode": "both", "content_from": ["2", 0],
                                                         "content_strength": 1.0, "style_strength": 1.0}},
        # prompt and content prompt come from the run; a style prompt equal to the combined one is not encoded
        # twice (each CLIP-G encode costs seconds on a CPU)
        "4": {"class_type": "UnZipLoRAPrompts", "inputs": {
            "clip": ["1", 1], "prompt": "", "content_prompt": "", "style_prompt": "A sks cat in sketch style",
            "negative_prompt": "blurry", "content_from": ["2", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["5", 0], "seed": seed,
            "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def _options(client, node: str, name: str) -> list:
    """A combo's choices as /object_info lists them now (V3 combos: ["COMBO", {"options": [...]}])."""
    spec = client.object_info(node)[node]["input"]["required"][name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def _pixels(client, entry: dict, node: str) -> bytes:
    from PIL import Image

    assert entry.get("status", {}).get("status_str") == "success", entry.get("status")
    (img,) = entry["outputs"][node]["images"]
    with Image.open(io.BytesIO(client.view(img["filename"], img.get("subfolder", ""), img["type"]))) as im:
        assert im.size == (128, 128)
        return im.convert("RGB").tobytes()


def test_pair_graph_samples_and_leaves_the_model_untouched(comfy_server, comfy_client, tiny_checkpoint):
    token = uuid.uuid4()
    seed, name = token.int % 2**31, f"pair_{token.hex[:8]}"
    models = comfy_server.base_dir / "models"
    shapes = attention_shapes(_tiny_sdxl_module().UNET_CONFIG)
    save_random_run(models / "loras" / "unziplora", name, shapes, seed=1, bundle_directory=models / "unziplora")
    assert f"{name}.safetensors" in _options(comfy_client, "UnZipLoRALoader", "bundle")
    assert f"unziplora/{name}_content.safetensors" in _options(comfy_client, "UnZipLoRALoadFiles", "content_lora")

    ckpt = tiny_checkpoint.name
    t0 = time.time()
    _, _, before = comfy_client.run(_plain_graph(ckpt, f"plain_{name}", seed), timeout=180)
    t1 = time.time()
    pid, events, entry = comfy_client.run(_pair_graph(ckpt, f"{name}.safetensors", f"both_{name}", seed), timeout=180)
    t2 = time.time()
    assert not events_of(events, "execution_error", pid), events_of(events, "execution_error", pid)
    executed = {d["node"] for d in events_of(events, "executing", pid) if d.get("node") is not None}
    assert {"2", "3", "4", "6", "8"} <= executed
    with_pair = _pixels(comfy_client, entry, "8")
    _, _, after = comfy_client.run(_plain_graph(ckpt, f"plain2_{name}", seed, advanced=True), timeout=180)
    print(f"plain graph {t1 - t0:.1f} s, pair graph {t2 - t1:.1f} s, plain again {time.time() - t2:.1f} s")
    plain_before, plain_after = _pixels(comfy_client, before, "7"), _pixels(comfy_client, after, "7")
    assert plain_after == plain_before  # bit-identical: the checkpoint's ModelPatcher was never modified
    print(f"pair image differs from plain in {sum(a != b for a, b in zip(with_pair, plain_before))} of "
          f"{len(with_pair)} bytes")
