"""A private, trainable copy of the diffusion model.

ComfyUI's model management has no locks: the queue can offload or re-patch a ModelPatcher while a thread
trains on it, and weights loaded during execution are inference tensors (backward fails on them). So the job
trains on its own copy, made outside inference mode, with the patcher's weight patches (LoRAs applied upstream
in the graph) folded in, and never registered with comfy.model_management.
"""

from __future__ import annotations

import copy
import hashlib

import torch

PREFIX = "diffusion_model."


def _original_weight(model_patcher, key: str, current: torch.Tensor) -> torch.Tensor:
    """The unpatched weight: ModelPatcher keeps originals of in-place patched weights in .backup."""
    backup = getattr(model_patcher, "backup", {}) or {}
    entry = backup.get(key)
    if entry is not None:
        return entry.weight
    return current


def patched_unet_state_dict(model_patcher) -> dict[str, torch.Tensor]:
    """The diffusion model's weights with the patcher's patches applied, as fresh (non-inference) tensors."""
    import comfy.lora

    patches = getattr(model_patcher, "patches", {}) or {}
    out = {}
    with torch.inference_mode(False), torch.no_grad():
        for name, tensor in model_patcher.model.diffusion_model.state_dict().items():
            key = PREFIX + name
            if key in patches:
                w = _original_weight(model_patcher, key, tensor).to("cpu", torch.float32).clone()
                w = comfy.lora.calculate_weight(patches[key], w, key)
                out[name] = w.to(tensor.dtype)
            else:
                out[name] = _original_weight(model_patcher, key, tensor).to("cpu").clone()
    return out


def fingerprint(state_dict: dict[str, torch.Tensor], also: list[str] = ()) -> str:
    """A cheap identity for a base model: shapes of all tensors and a sample of some of them (every 16th name,
    plus `also`: the weights that graph-side patches changed)."""
    h = hashlib.sha256()
    names = sorted(state_dict)
    for name in names:
        h.update(f"{name}:{tuple(state_dict[name].shape)};".encode())
    for name in sorted(set(names[:: max(1, len(names) // 16)]) | set(also)):
        sample = state_dict[name].flatten()[:4096].to(torch.float32).contiguous()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def private_unet_copy(model_patcher, dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, str]:
    """(a trainable copy of the diffusion model on the CPU, its fingerprint). The copy's ComfyUI ops run as
    plain torch layers (no per-forward weight casting, no lowvram weight functions)."""
    state = patched_unet_state_dict(model_patcher)
    src = model_patcher.model.diffusion_model
    with torch.inference_mode(False):
        # deepcopy of a module on the meta device copies structure only; the weights come from `state`
        unet = _structure_copy(src)
        unet.load_state_dict(state, strict=True, assign=True)
    as_plain_torch_layers(unet)
    if dtype is not None:
        unet.to(dtype)
    unet.requires_grad_(False)
    unet.train(False)
    patched = [k[len(PREFIX):] for k in (getattr(model_patcher, "patches", {}) or {}) if k.startswith(PREFIX)]
    return unet, fingerprint(state, [k for k in patched if k in state])


def as_plain_torch_layers(module: torch.nn.Module) -> int:
    """Turn ComfyUI's op layers (comfy.ops.*.Linear, Conv2d, GroupNorm, ...) into their torch base classes.

    Their forward calls comfy.ops.run_every_op(), which checks AND clears ComfyUI's global interrupt flag: in a
    training thread that would stop training when the user interrupts an unrelated prompt, and swallow that
    interrupt. The torch classes have the same parameters and state_dict keys; only the forward differs.
    """
    n = 0
    for m in module.modules():
        cls = type(m)
        if not cls.__module__.startswith("comfy.ops"):
            continue
        base = next((c for c in cls.__mro__ if c.__module__.startswith("torch.nn")), None)
        if base is not None:
            m.__class__ = base
            n += 1
    return n


def _structure_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the module tree whose tensors live on the meta device (no memory, no data copy)."""
    memo = {}
    for t in list(module.parameters()) + list(module.buffers()):
        memo[id(t)] = torch.nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=False) \
            if isinstance(t, torch.nn.Parameter) else torch.empty_like(t, device="meta")
    return copy.deepcopy(module, memo)
