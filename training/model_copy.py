"""A private, trainable copy of the diffusion model.

ComfyUI's model management has no locks: the queue can offload or re-patch a ModelPatcher while a thread
trains on it, and weights loaded during execution are inference tensors (backward fails on them). So the job
trains on its own copy, made outside inference mode, with the patcher's weight patches (LoRAs applied upstream
in the graph) folded in, and never registered with comfy.model_management.

The copy is built anew from the model's config, never copied from the live module tree: under dynamic VRAM
(comfy-aimdo, ComfyUI >= 0.16) the live modules carry native handles (`_v` VBAR allocations, `_pin_state`
host buffers that free native memory in `__del__`, `*_lowvram_function` patch objects). A deep copy either
fails on them (ctypes pointers cannot be pickled) or duplicates a handle that the copy's finaliser then frees
under the live model. Only parameter and buffer values cross over, one tensor at a time, into a module built
on the meta device, so preparing the copy holds the live weights plus the copy plus one tensor in flight.
"""

from __future__ import annotations

import hashlib

import torch

PREFIX = "diffusion_model."


class PlainOps:
    """The `operations` namespace ComfyUI's UNetModel builds its layers from, as plain torch layers.

    ComfyUI's op layers cast weights per forward and call comfy.ops.run_every_op(), which checks AND clears
    ComfyUI's global interrupt flag: in a training thread that would stop training when the user interrupts
    an unrelated prompt, and swallow that interrupt. Names missing here fall back to comfy.ops (see
    build_unet), and as_plain_torch_layers turns those into torch classes afterwards.
    """

    Linear = torch.nn.Linear
    Conv1d = torch.nn.Conv1d
    Conv2d = torch.nn.Conv2d
    Conv3d = torch.nn.Conv3d
    GroupNorm = torch.nn.GroupNorm
    LayerNorm = torch.nn.LayerNorm
    ConvTranspose1d = torch.nn.ConvTranspose1d
    ConvTranspose2d = torch.nn.ConvTranspose2d
    Embedding = torch.nn.Embedding

    @classmethod
    def conv_nd(cls, dims, *args, **kwargs):
        if dims == 2:
            return cls.Conv2d(*args, **kwargs)
        if dims == 3:
            return cls.Conv3d(*args, **kwargs)
        raise ValueError(f"unsupported dimensions: {dims}")


def _operations():
    """PlainOps, with anything else ComfyUI's ops offer (newer UNet code may ask for more) from comfy.ops."""
    import comfy.ops

    return type("PlainOps", (PlainOps, comfy.ops.disable_weight_init), {})


def unet_config_of(model_patcher) -> dict:
    config = getattr(getattr(model_patcher.model, "model_config", None), "unet_config", None)
    if not config:
        raise ValueError("model has no unet_config: UnZipLoRA trains SDXL-architecture UNet models")
    return dict(config)


def build_unet(model_patcher) -> torch.nn.Module:
    """An empty (meta-device) UNetModel with the live model's config and plain torch layers."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    live = model_patcher.model.diffusion_model
    if not isinstance(live, UNetModel):
        raise ValueError(f"model's diffusion model is {type(live).__name__}: UnZipLoRA trains UNetModel "
                         "(SDXL-architecture) models")
    config = unet_config_of(model_patcher)
    config.pop("disable_unet_model_creation", None)
    config.pop("device", None)
    config.pop("operations", None)
    with torch.device("meta"):
        return UNetModel(**config, device="meta", operations=_operations())


def _original_weight(model_patcher, key: str, current: torch.Tensor) -> torch.Tensor:
    """The unpatched weight: ModelPatcher keeps originals of in-place patched (or, under dynamic VRAM,
    device-cast) weights in .backup."""
    backup = getattr(model_patcher, "backup", {}) or {}
    entry = backup.get(key)
    if entry is not None:
        return entry.weight
    return current


def _live_tensors(model_patcher):
    """(name, tensor) for every parameter and persistent buffer of the live diffusion model, read one at a
    time (state_dict(keep_vars) walks the tree without copying)."""
    return model_patcher.model.diffusion_model.state_dict(keep_vars=True).items()


def _fresh(model_patcher, name: str, tensor: torch.Tensor, patches: dict, device=None,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """One weight as a new tensor outside inference mode, with its graph-side patches folded in, on `device`
    (default: the CPU) in `dtype` (floating-point weights only; default: as stored). Each weight goes straight
    from the live model to where it will be trained, so no second full copy exists on the host at any time."""
    import comfy.lora

    key = PREFIX + name
    src = _original_weight(model_patcher, key, tensor).detach()
    device = torch.device("cpu") if device is None else torch.device(device)
    want = dtype if (dtype is not None and src.is_floating_point()) else src.dtype
    if key in patches:
        w = src.to(device, torch.float32, copy=True)
        w = comfy.lora.calculate_weight(patches[key], w, key)
        return w.to(want)
    return src.to(device, want, copy=True)


def _assign(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        raise KeyError(f"the UNet built from the model's config has no weight {name}: the checkpoint does not "
                       "match its own config")


def private_unet_copy(model_patcher, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> tuple[torch.nn.Module, str]:
    """(a trainable copy of the diffusion model, its fingerprint), sharing nothing with the live module tree but
    the numbers. Built weight by weight on `device` (default: the CPU) in `dtype` (default: as stored), so it
    costs the copy's own bytes there and never a full host copy on the way (nor a second one for a cast).
    The fingerprint is of the weights as the model holds them, whatever dtype the copy takes."""
    patches = getattr(model_patcher, "patches", {}) or {}
    patched = {k[len(PREFIX):] for k in patches if k.startswith(PREFIX)}
    with torch.inference_mode(False), torch.no_grad():
        unet = build_unet(model_patcher)
        expected = set(unet.state_dict(keep_vars=True))
        sampled = set(sorted(expected)[:: max(1, len(expected) // 16)]) | (patched & expected)
        shapes, samples = {}, {}
        for name, tensor in _live_tensors(model_patcher):
            if name in patched:  # the fingerprint reads the weight as patched, before any cast
                value = _fresh(model_patcher, name, tensor, patches, device)
                if name in sampled:
                    samples[name] = _fingerprint_sample(value)
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
            else:  # ... and unpatched ones at the source, without reading back from the copy's device
                if name in sampled:
                    samples[name] = _fingerprint_sample(_original_weight(model_patcher, PREFIX + name, tensor))
                value = _fresh(model_patcher, name, tensor, patches, device, dtype)
            _assign(unet, name, value)
            shapes[name] = tuple(value.shape)
        missing = sorted(expected - set(shapes))
        if missing:
            raise ValueError(f"model lacks {len(missing)} weights its config implies (e.g. {missing[0]}): "
                             "the checkpoint does not match its own unet_config")
        fp = _fingerprint_of(shapes, samples)
        as_plain_torch_layers(unet)
    unet.requires_grad_(False)
    unet.train(False)
    return unet, fp


def release_copy(unet: torch.nn.Module) -> None:
    """Free a private copy's weights wherever they are (they become meta tensors: shapes only). For the end of
    a job on a card, where moving the copy back to the CPU would cost a full host copy."""
    with torch.no_grad():
        unet.to("meta")


def _fingerprint_sample(t: torch.Tensor) -> torch.Tensor:
    return t.detach().flatten()[:4096].to("cpu", torch.float32, copy=True).contiguous()


def _fingerprint_of(shapes: dict[str, tuple], samples: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(shapes):
        h.update(f"{name}:{shapes[name]};".encode())
    for name in sorted(samples):
        h.update(samples[name].numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(state_dict: dict[str, torch.Tensor], also: list[str] = ()) -> str:
    """A cheap identity for a base model: shapes of all tensors and a sample of some of them (every 16th name,
    plus `also`: the weights that graph-side patches changed)."""
    names = sorted(state_dict)
    sampled = set(names[:: max(1, len(names) // 16)]) | set(also)
    return _fingerprint_of({n: tuple(state_dict[n].shape) for n in names},
                           {n: _fingerprint_sample(state_dict[n]) for n in sampled})


def as_plain_torch_layers(module: torch.nn.Module) -> int:
    """Turn ComfyUI's op layers (comfy.ops.*.Linear, Conv2d, GroupNorm, ...) into their torch base classes.

    Their forward calls comfy.ops.run_every_op(), which checks AND clears ComfyUI's global interrupt flag (see
    PlainOps). The torch classes have the same parameters and state_dict keys; only the forward differs.
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
