"""The dual (content + style) LoRA that sits on one attention linear.

    y = W0 x + (m_c * M_c) . (B_c A_c x_c) + (m_s * M_s) . (B_s A_s x_s)

Only the delta is computed here; the base projection W0 x stays ComfyUI's. Everything is factored,
(x A^T) B^T, so no dense out x in matrix is ever formed in a forward (method.md). Masks and mergers act on
output channels ("columns" in the paper's wording: rows of B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIDES = ("content", "style")


class LoRAFactors(nn.Module):
    """One side (content or style) of a dual LoRA: factors, merger, hard mask.

    mask_mode: "masked" (the hard mask applies while masks are on), "relaxed" (all columns, always: the
    LoRA's own blocks under block separation) or "off" (no masks at all: prompt-only / naive / B-LoRA modes).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, init: str = "gaussian",
                 mask_mode: str = "masked", generator: torch.Generator | None = None):
        super().__init__()
        if init not in ("gaussian", "zero_up"):
            raise ValueError(f"init must be 'gaussian' or 'zero_up', got {init!r}")
        if mask_mode not in ("masked", "relaxed", "off"):
            raise ValueError(f"mask_mode must be 'masked', 'relaxed' or 'off', got {mask_mode!r}")
        std = 1.0 / rank
        # Both factors N(0, (1/r)^2): with B = 0 the first Cone score (W * dW) would be all zero.
        self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) * std)
        up = torch.zeros(out_features, rank) if init == "zero_up" else torch.randn(out_features, rank, generator=generator) * std
        self.up = nn.Parameter(up)
        self.merger = nn.Parameter(torch.ones(out_features))
        self.register_buffer("mask", torch.zeros(out_features))
        self.mask_mode = mask_mode

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def column_scale(self, masks_on: bool) -> torch.Tensor:
        """Per-output-channel factor m * M (M = 1 where the mask does not apply)."""
        if masks_on and self.mask_mode == "masked":
            return self.merger * self.mask
        return self.merger

    def scaled_up(self, masks_on: bool) -> torch.Tensor:
        """(m * M)[:, None] * B: the column scale folded into B, so a forward saves only the N x r intermediate
        for backward (scaling the N x out product instead would keep that product for the merger's gradient)."""
        return self.up * self.column_scale(masks_on)[:, None]

    def factors(self, masks_on: bool, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, (m M) . B) on `device` in `dtype`; the device too: at inference the LoRA may stay where it was built
        while ComfyUI moves the UNet."""
        return self.down.to(device=device, dtype=dtype), self.scaled_up(masks_on).to(device=device, dtype=dtype)

    def delta(self, x: torch.Tensor, masks_on: bool) -> torch.Tensor:
        down, up = self.factors(masks_on, x.device, x.dtype)
        return F.linear(F.linear(x, down), up)

    def baked_up(self) -> torch.Tensor:
        """B with the hard mask baked in (unselected rows zero) and the merger NOT baked: what is saved."""
        if self.mask_mode == "masked":
            return self.up * self.mask[:, None]
        return self.up


class DualLoRA(nn.Module):
    """Content and style LoRA on one linear. Either side may be absent (B-LoRA puts one LoRA per block)."""

    def __init__(self, in_features: int, out_features: int, rank: int = 64, *, content: str | None = "masked",
                 style: str | None = "masked", init: str = "gaussian", generator: torch.Generator | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.content = LoRAFactors(in_features, out_features, rank, init, content, generator) if content else None
        self.style = LoRAFactors(in_features, out_features, rank, init, style, generator) if style else None
        self.masks_on = False
        # set by ContentStyleLoRA.step_factors for one training step (forward and backward), else None
        self._prepared: dict | None = None

    def sides(self):
        """(name, LoRAFactors) for each present side, content first."""
        return [(n, getattr(self, n)) for n in SIDES if getattr(self, n) is not None]

    def step_factors(self, device, dtype, fused: bool) -> dict:
        """The factors a forward uses, in the compute dtype, with the column scales folded into B.

        fused (content and style read the same input): {"fused": (cat(A_c, A_s), cat(s_c B_c, s_s B_s))}, one
        rank-2r LoRA, so each forward is two matmuls whatever the number of sides. Otherwise per side
        {"content": (A_c, s_c B_c), "style": ...} (attn2 K/V, where the streams differ).
        """
        sides = self.sides()
        if fused and len(sides) == 2:
            pairs = [f.factors(self.masks_on, device, None) for _, f in sides]
            down = torch.cat([p[0] for p in pairs], 0).to(device=device, dtype=dtype)
            up = torch.cat([p[1] for p in pairs], 1).to(device=device, dtype=dtype)
            return {"fused": (down, up)}
        return {name: f.factors(self.masks_on, device, dtype) for name, f in sides}

    def delta(self, x: torch.Tensor, x_c: torch.Tensor | None = None, x_s: torch.Tensor | None = None) -> torch.Tensor | None:
        """Sum of the present sides' deltas; x_c / x_s default to x (equal inputs everywhere but attn2 K/V)."""
        same = (x_c is None or x_c is x) and (x_s is None or x_s is x)
        prepared = self._prepared
        fused = same and self.content is not None and self.style is not None
        # under autocast x may be a norm's fp32 output while the factors are bf16: the linear casts x anyway
        if prepared is None or ("fused" in prepared) != fused or (
                next(iter(prepared.values()))[0].dtype != x.dtype and not torch.is_autocast_enabled(x.device.type)):
            prepared = self.step_factors(x.device, x.dtype, fused=fused)
        if "fused" in prepared:
            down, up = prepared["fused"]
            return F.linear(F.linear(x, down), up)
        streams = {"content": x if x_c is None else x_c, "style": x if x_s is None else x_s}
        out = None
        for name, (down, up) in prepared.items():
            d = F.linear(F.linear(streams[name], down), up)
            out = d if out is None else out + d
        return out

    def forward(self, x, x_c=None, x_s=None):
        return self.delta(x, x_c, x_s)

    def extra_repr(self) -> str:
        sides = ", ".join(f"{n}={s.mask_mode}" for n, s in self.sides())
        return f"in={self.in_features}, out={self.out_features}, {sides}"
