"""Previews during training: small content-only, style-only and combined samples, every N steps.

They run in the job's thread on the job's private UNet, with their own generator (training's random stream is
untouched, so a run with previews ends with the same weights as one without) and a private VAE decoder copy
(ComfyUI's VAE object belongs to the queue, whose model management is not thread-safe). They sample with the
run's Objective (the model's own prediction type and sigmas), as ComfyUI's samplers will use the LoRAs.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..unziplora.kv_patch import predict_eps
from .model_copy import as_plain_torch_layers
from .objective import Objective

KINDS = ("content", "style", "combined")


@dataclass
class PreviewInputs:
    negative: torch.Tensor  # empty-prompt tokens [1, L, 2048]
    negative_adm: torch.Tensor  # y for the negative branch
    decode: Callable[[torch.Tensor], torch.Tensor]  # model-scale latent [1, 4, h, w] -> image [1, H, W, 3] in 0..1


def private_decoder(vae, latent_format) -> Callable[[torch.Tensor], torch.Tensor]:
    """A decode function over a private copy of the VAE (decoder only is used), made outside inference mode."""
    with torch.inference_mode(False):
        fsm = copy.deepcopy(vae.first_stage_model).float().cpu()
    as_plain_torch_layers(fsm)
    fsm.requires_grad_(False)

    @torch.no_grad()
    def decode(latent: torch.Tensor) -> torch.Tensor:
        device = latent.device
        fsm.to(device)
        try:
            image = fsm.decode(latent_format.process_out(latent.float()))
        finally:
            fsm.to("cpu")
        return torch.clamp((image + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1).cpu()

    return decode


@contextlib.contextmanager
def only_side(lora, side: str | None):
    """Temporarily remove the other LoRA from every layer (side None: keep both)."""
    removed = []
    if side is not None:
        other = "style" if side == "content" else "content"
        for _path, _block, dual in lora.items():
            if dual._modules.get(other) is not None:
                removed.append((dual, dual._modules[other]))
                dual._modules[other] = None
    try:
        yield
    finally:
        for dual, module in removed:
            dual._modules[other] = module


def euler_sample(model_fn, shape, objective: Objective, steps: int, cfg: float, generator: torch.Generator,
                 device, dtype) -> torch.Tensor:
    """Plain Euler in sigma space over the model's schedule with classifier-free guidance: enough for a preview.

    model_fn(input, t) -> (cond output, uncond output), each what the model predicts (eps or v). Guidance mixes the
    raw outputs: eps and v are both affine in the denoised latent with the same coefficients for cond and uncond,
    so this equals guidance on the denoised latent, as ComfyUI's CFG does.
    """
    ts = torch.linspace(objective.num_timesteps - 1, 0, steps).round().long()
    sigmas = [float(objective.sigmas[t]) for t in ts] + [0.0]
    x = torch.randn(shape, generator=generator).to(device) * sigmas[0]
    for i, t in enumerate(ts):
        s = sigmas[i]
        xt = x / (s * s + 1) ** 0.5
        out_c, out_u = model_fn(xt.to(dtype), torch.full((1,), float(t), device=device))
        out = out_u.float() + cfg * (out_c.float() - out_u.float())
        x = x + objective.to_eps(out, xt, int(t)) * (sigmas[i + 1] - s)
    return x


class PreviewRenderer:
    def __init__(self, preview: PreviewInputs, inputs, config, objective: Objective, device, dtype, out_dir: str,
                 subfolder: str):
        self.p = preview
        self.inputs = inputs
        self.config = config
        self.objective = objective
        self.device, self.dtype = device, dtype
        self.out_dir, self.subfolder = out_dir, subfolder

    @torch.no_grad()
    def render(self, unet, lora, step: int, separate: bool) -> list[dict]:
        cfg = self.config
        s = self.inputs.streams.to(self.device, self.dtype)
        adm = self.inputs.adm.to(self.device, self.dtype)
        neg = self.p.negative.to(self.device, self.dtype)
        neg_adm = self.p.negative_adm.to(self.device, self.dtype)
        size = cfg.resolution // 8
        os.makedirs(self.out_dir, exist_ok=True)
        entries = []
        for kind in KINDS:
            if kind == "combined":
                cond = (s.x, s.x_c if separate else None, s.x_s if separate else None)
            else:
                x = s.x_c if kind == "content" else s.x_s
                cond = (x, None, None)  # one LoRA alone is an ordinary LoRA on its own prompt

            def model_fn(inp, t, cond=cond):
                c = predict_eps(unet, lora, inp, t, cond[0], adm, content=cond[1], style=cond[2])
                # the paper's CFG: zero content/style streams in the unconditional branch
                zeros = torch.zeros_like(neg) if separate and kind == "combined" else None
                u = predict_eps(unet, lora, inp, t, neg, neg_adm, content=zeros, style=zeros)
                return c, u

            gen = torch.Generator().manual_seed(cfg.seed + 1)  # same noise every time: previews compare
            with only_side(lora, None if kind == "combined" else kind), self._autocast():
                latent = euler_sample(model_fn, (1, 4, size, size), self.objective, cfg.preview_steps, 5.0, gen,
                                      self.device, self.dtype)
            image = self.p.decode(latent.float())
            name = f"step_{step:06d}_{kind}.png"
            _save_png(image[0], os.path.join(self.out_dir, name))
            entries.append({"kind": kind, "step": step, "filename": name, "subfolder": self.subfolder,
                            "type": "output"})
        return entries

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def _save_png(image: torch.Tensor, path: str) -> None:
    from PIL import Image

    arr = (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    tmp = path + ".tmp.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)
