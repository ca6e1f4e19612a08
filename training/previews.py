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
import time
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
    # y of the content / style prompt alone: a LoRA used alone gets its own prompt's pooled vector, as with the
    # stock LoraLoader and that prompt (None: the combined prompt's, for inputs prepared without them)
    content_adm: torch.Tensor | None = None
    style_adm: torch.Tensor | None = None


class PreviewStopped(Exception):
    """The job was asked to stop while a preview was sampling."""


@contextlib.contextmanager
def without_mergers(lora, side: str | None):
    """Mergers at 1 on one side for the duration (side None: untouched). The saved LoRA file carries the hard mask
    but not the mergers, so a LoRA used alone (stock LoraLoader, Apply content/style) runs without them."""
    saved = []
    if side is not None:
        for _path, _block, dual in lora.items():
            factors = dual._modules.get(side)
            if factors is not None:
                saved.append((factors.merger, factors.merger.data))
                factors.merger.data = torch.ones_like(factors.merger.data)
    try:
        yield
    finally:
        for param, data in saved:
            param.data = data


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
                 device, dtype, on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Plain Euler in sigma space over the model's schedule with classifier-free guidance: enough for a preview.

    model_fn(input, t) -> (cond output, uncond output), each what the model predicts (eps or v). Guidance mixes the
    raw outputs: eps and v are both affine in the denoised latent with the same coefficients for cond and uncond,
    so this equals guidance on the denoised latent, as ComfyUI's CFG does. on_step(i, steps) runs before each step
    (progress, and a stop request raising PreviewStopped).
    """
    ts = torch.linspace(objective.num_timesteps - 1, 0, steps).round().long()
    sigmas = [float(objective.sigmas[t]) for t in ts] + [0.0]
    x = torch.randn(shape, generator=generator).to(device) * sigmas[0]
    for i, t in enumerate(ts):
        if on_step is not None:
            on_step(i, steps)
        s = sigmas[i]
        xt = x / (s * s + 1) ** 0.5
        out_c, out_u = model_fn(xt.to(dtype), torch.full((1,), float(t), device=device))
        out = out_u.float() + cfg * (out_c.float() - out_u.float())
        x = x + objective.to_eps(out, xt, int(t)) * (sigmas[i + 1] - s)
    return x


class PreviewRenderer:
    def __init__(self, preview: PreviewInputs, inputs, config, objective: Objective, device, dtype, out_dir: str,
                 subfolder: str, *, should_stop: Callable[[], bool] | None = None,
                 on_tick: Callable[[str, int, int], None] | None = None,
                 on_done: Callable[[float], None] | None = None):
        """The job's hooks: should_stop() true ends a preview at its next sampling step (Cancel does not wait for
        it); on_tick(kind, i, n) reports progress while sampling (the job's ETA and panel keep moving);
        on_done(seconds) its cost."""
        self.p = preview
        self.inputs = inputs
        self.config = config
        self.objective = objective
        self.device, self.dtype = device, dtype
        self.out_dir, self.subfolder = out_dir, subfolder
        self.should_stop, self.on_tick, self.on_done = should_stop, on_tick, on_done

    def _adm(self, kind: str, combined: torch.Tensor) -> torch.Tensor:
        own = {"content": self.p.content_adm, "style": self.p.style_adm}.get(kind)
        return combined if own is None else own.to(combined.device, combined.dtype)

    def render(self, unet, lora, step: int, separate: bool) -> list[dict]:
        """The previews of this step; fewer (those finished) when the job is asked to stop meanwhile."""
        t0 = time.monotonic()
        try:
            return self._render(unet, lora, step, separate)
        finally:
            if self.on_done is not None:
                self.on_done(time.monotonic() - t0)

    @torch.no_grad()
    def _render(self, unet, lora, step: int, separate: bool) -> list[dict]:
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
            kind_adm = self._adm(kind, adm)

            def model_fn(inp, t, cond=cond, kind_adm=kind_adm):
                c = predict_eps(unet, lora, inp, t, cond[0], kind_adm, content=cond[1], style=cond[2])
                # the paper's CFG: zero content/style streams in the unconditional branch
                zeros = torch.zeros_like(neg) if separate and kind == "combined" else None
                u = predict_eps(unet, lora, inp, t, neg, neg_adm, content=zeros, style=zeros)
                return c, u

            gen = torch.Generator().manual_seed(cfg.seed + 1)  # same noise every time: previews compare
            side = None if kind == "combined" else kind
            try:
                with only_side(lora, side), without_mergers(lora, side), self._autocast():
                    latent = euler_sample(model_fn, (1, 4, size, size), self.objective, cfg.preview_steps, 5.0,
                                          gen, self.device, self.dtype, on_step=self._step_hook(kind))
            except PreviewStopped:
                break
            image = self.p.decode(latent.float())
            name = f"step_{step:06d}_{kind}.png"
            _save_png(image[0], os.path.join(self.out_dir, name))
            entries.append({"kind": kind, "step": step, "filename": name, "subfolder": self.subfolder,
                            "type": "output"})
        return entries

    def _step_hook(self, kind: str):
        def on_step(i: int, n: int) -> None:
            if self.should_stop is not None and self.should_stop():
                raise PreviewStopped()
            if self.on_tick is not None:
                self.on_tick(kind, i, n)

        return on_step

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
