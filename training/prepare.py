"""Turn the graph's MODEL / CLIP / VAE / IMAGE into a run's inputs, in the queue thread, before the job starts.

Everything handed to the background thread is a fresh tensor or a private module copy: the graph's objects
may be changed or freed by the queue at any moment after the node returns.
"""

from __future__ import annotations

import time

import torch

from ..unziplora.kv_patch import sdxl_y
from ..unziplora.roles import get_mode
from ..unziplora.targets import find_targets
from .config import TrainConfig
from .data import LatentPosteriors, PromptStreams, check_image, encode_posteriors, encode_prompts, encode_text
from . import host_ram
from .loop import TrainInputs, pick_precision, weight_dtype_of
from .model_copy import private_unet_copy
from .objective import from_model as objective_of
from .previews import PreviewInputs, private_decoder


def check_sdxl(model_patcher) -> None:
    """Refuse anything that is not SDXL-shaped, naming what it is."""
    model = getattr(model_patcher, "model", None)
    unet = getattr(model, "diffusion_model", None)
    config = getattr(getattr(model, "model_config", None), "unet_config", {}) or {}
    ok = (unet is not None and hasattr(unet, "output_blocks") and config.get("context_dim") == 2048
          and config.get("adm_in_channels") == 2816 and hasattr(model, "encode_adm"))
    if not ok:
        kind = type(model).__name__ if model is not None else type(model_patcher).__name__
        raise ValueError(f"model is {kind} (context_dim {config.get('context_dim')}, adm {config.get('adm_in_channels')}): "
                         "UnZipLoRA trains SDXL-architecture models (SDXL base, Pony, Illustrious, NoobAI eps and "
                         "v-pred, SSD-1B, Vega, KOALA, ...)")


def time_ids_adm(model, pooled: torch.Tensor, resolution: int) -> torch.Tensor:
    """The UNet's y vector: the combined prompt's pooled output + fixed ids (res, res, 0, 0, res, res)."""
    return sdxl_y(model, pooled, (resolution, resolution, 0, 0, resolution, resolution)).detach().float()


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A normal tensor. The queue runs nodes under torch.inference_mode(): tensors made there, clones included,
    are inference tensors, which the job's thread cannot use in anything autograd tracks."""
    with torch.inference_mode(False):
        return t.clone()


def copy_plan(model_patcher, config: TrainConfig, device: torch.device) -> tuple[torch.device, torch.dtype]:
    """(where the private copy is made, its dtype): the dtype the job computes in, so the job never casts the
    whole copy; on a CUDA card directly there, weight by weight, so no full copy ever sits in host RAM."""
    live = model_patcher.model.diffusion_model
    dtype, _ = pick_precision(config, device, weight_dtype_of(live))
    return (device if device.type == "cuda" else torch.device("cpu")), dtype


def make_room(model_patcher, device: torch.device, dtype: torch.dtype) -> None:
    """Before the copy is made on a card: ask ComfyUI to unload what it can for the copy's weights and the job's
    headroom (queue thread: the only place model management may be touched)."""
    if device.type != "cuda":
        return
    import comfy.model_management as mm

    params = sum(p.numel() for p in model_patcher.model.diffusion_model.parameters())
    mm.free_memory(params * (torch.finfo(dtype).bits // 8) * 3, device)  # weights + activations/optimiser
    mm.soft_empty_cache()


def host_estimate(model_patcher, config: TrainConfig, copy_device: torch.device, dtype: torch.dtype,
                  targets) -> host_ram.HostEstimate:
    live = model_patcher.model.diffusion_model
    params = sum(p.numel() for p in live.parameters())
    largest = max((p.numel() for p in live.parameters()), default=0)
    optimizer = "adamw_bf16" if config.optimizer in ("adamw_bf16", "low_memory") else "adamw"
    on_host = copy_device.type == "cpu"
    checkpointing = config.gradient_checkpointing in ("on", "selective") or (
        config.gradient_checkpointing == "auto" and not on_host)
    return host_ram.estimate(params, largest, dtype, host_ram.lora_parameters(targets, get_mode(config.mode)
                             .for_targets(targets), config.rank), optimizer, config.resolution, on_host,
                             checkpointing)


def prepare_inputs(model_patcher, clip, vae, image: torch.Tensor, prompt: str, content_prompt: str,
                   style_prompt: str, config: TrainConfig, device: torch.device | str | None = None,
                   shared: dict | None = None) -> TrainInputs:
    """device: where the job will train (default: ComfyUI's device). shared: a batch's dict; the first image fills
    it with the private base copy and preview decoder, the others reuse them (training/batch.py copies the base per
    job), so a batch holds one copy, not one per image."""
    config.validate()
    check_sdxl(model_patcher)
    # both fail here, on the node, rather than in the job: a sampling type the trainer has no target for, and a
    # mode whose blocks this model lacks (SSD-1B, Vega, KOALA have fewer)
    objective = objective_of(model_patcher)
    targets = find_targets(model_patcher)
    get_mode(config.mode).for_targets(targets)
    if device is None:
        from .service import default_device

        device = default_device()
    copy_device, copy_dtype = copy_plan(model_patcher, config, torch.device(device))
    # before anything is encoded or copied: a job the host cannot hold would get ComfyUI killed by the kernel
    host_ram.check(host_estimate(model_patcher, config, copy_device, copy_dtype, targets), torch.device(device))
    if clip is None:
        raise ValueError("clip is missing: connect the checkpoint's CLIP so the three prompts can be encoded")
    if vae is None:
        raise ValueError("vae is missing: connect the checkpoint's VAE so the image can be encoded")
    check_image(image)  # before the prompts: a CPU encode of them takes seconds, wasted on an image refused after
    key = ("streams", prompt, content_prompt, style_prompt)  # a batch's images mostly share their prompts
    streams = shared.get(key) if shared is not None else None
    if streams is None:
        streams = encode_prompts(clip, prompt, content_prompt, style_prompt)
        if shared is not None:
            shared[key] = streams
    posteriors = encode_posteriors(vae, image, config.resolution, model_patcher.model.latent_format)
    adm = _plain(time_ids_adm(model_patcher.model, streams.pooled, config.resolution))
    streams = PromptStreams(*(_plain(t) for t in (streams.x, streams.x_c, streams.x_s, streams.pooled)))
    posteriors = LatentPosteriors(_plain(posteriors.mean), _plain(posteriors.std))
    t0 = time.monotonic()
    if shared is not None and "unet" in shared:
        unet, fp = shared["unet"], shared["fingerprint"]
    else:
        make_room(model_patcher, copy_device, copy_dtype)
        unet, fp = private_unet_copy(model_patcher, dtype=copy_dtype, device=copy_device)
        if shared is not None:
            shared.update(unet=unet, fingerprint=fp)
    copy_s = time.monotonic() - t0
    preview = None
    if config.preview_every:
        key = ("preview", content_prompt, style_prompt)
        cached = shared.get(key) if shared is not None else None
        if cached is None:
            neg, neg_pooled = encode_text(clip, "", "negative prompt")
            neg_adm = time_ids_adm(model_patcher.model, _plain(neg_pooled), config.resolution)
            own_adm = {}
            for role, text in (("content", content_prompt), ("style", style_prompt)):
                _, pooled = encode_text(clip, text, f"{role}_prompt")  # encoded above for the streams
                own_adm[role] = _plain(time_ids_adm(model_patcher.model, _plain(pooled), config.resolution))
            cached = (neg, neg_adm, own_adm)
            if shared is not None:
                shared[key] = cached
        neg, neg_adm, own_adm = cached
        preview = PreviewInputs(negative=_plain(neg.float()), negative_adm=_plain(neg_adm),
                                decode=_decoder(vae, model_patcher, shared),
                                content_adm=own_adm["content"], style_adm=own_adm["style"])
    info = {"prompt": prompt, "content_prompt": content_prompt, "style_prompt": style_prompt,
            "images": int(posteriors.mean.shape[0]), "prediction": objective.describe(),
            "copy_s": round(copy_s, 1), "copy_dtype": str(copy_dtype).replace("torch.", ""),
            "copy_device": str(copy_device)}
    return TrainInputs(unet=unet, streams=streams, posteriors=posteriors, adm=adm, base_fingerprint=fp, info=info,
                       preview=preview, thumbnail=small_image(image), objective=objective)


def _decoder(vae, model_patcher, shared: dict | None):
    if shared is None:
        return private_decoder(vae, model_patcher.model.latent_format)
    if "decoder" not in shared:
        shared["decoder"] = private_decoder(vae, model_patcher.model.latent_format)
    return shared["decoder"]


def small_image(image: torch.Tensor, side: int = 512):
    """The first image of an IMAGE batch as a uint8 array, its shorter side at most `side` px (a copy: the
    graph's tensor may be freed once the node returns)."""
    import numpy as np

    first = image[0, ..., :3].detach().float().cpu()
    h, w = first.shape[:2]
    step = max(1, min(h, w) // side)
    return (first[::step, ::step].clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
