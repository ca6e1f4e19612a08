"""Column importance ("Cone" scores) and top-K column picking for UnZipLoRA's column separation.

A column is one output channel of a LoRA'd linear: a row of B (up), one entry of the merger and of the mask.

Score, per LoRA side and layer, at the selection step (method.md "Column separation"):

    W = B A                              (out x in, dense: formed here only, one layer at a time)
    G = m[:, None] * (dB A + B dA)       (dB = dL/dB, dA = dL/dA: this step's gradients)
    C = W * G                            (elementwise)
    density[i]   = #{j : |C[i, j]| > threshold} / in
    magnitude[i] = sum_j |C[i, j]|

G is the authors' formulation, not the exact dL/dW. With y = (m * M) . (B A x), the true gradient of the
dense product is G* = diag(m M) (dL/dy) x^T summed over positions, while the factor gradients are its
projections dB = G* A^T and dA = B^T G*, so dB A + B dA = G* A^T A + B B^T G*: G* seen through the LoRA's
row and column spaces. G* itself is not recoverable from dB and dA, and obtaining it would need a hook on
every forward. The extra merger factor is also theirs (G* already contains m once). We reproduce the
ranking the paper's numbers come from, so we keep both; at the selection step the mergers have been frozen
since the reset, so no merger-gradient term appears.

Threshold: the authors compared |C| with 1e-5 on gradients still multiplied by the fp16 loss scale (2^16),
so nearly every entry passed and the density was ~1 everywhere. Here C is computed from the gradients the
optimiser sees (call this after any GradScaler.unscale_), and the threshold stays a parameter with the
same number, 1e-5. On a real SDXL step |C| is mostly far below it, so the density is then ~0 almost
everywhere. Either way the density rarely separates columns, and the magnitude tie-break decides: the
total Cone importance of the column, which is the intent. The density matters only when the threshold sits
inside the spread of |C|, which is why it stays tunable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .dual_lora import DualLoRA, LoRAFactors


@dataclass
class ConeScores:
    """Per-column Cone scores of one LoRA side in one layer."""

    count: torch.Tensor  # (out,) int64: input positions with |C| > threshold
    magnitude: torch.Tensor  # (out,) float32: sum of |C| along the input dim
    in_features: int

    @property
    def density(self) -> torch.Tensor:
        return self.count.float() / self.in_features

    def __len__(self) -> int:
        return self.count.numel()


def _grad_f32(p: torch.Tensor) -> torch.Tensor | None:
    return None if p.grad is None else p.grad.detach().float()


@torch.no_grad()
def cone_scores(side: LoRAFactors, threshold: float = 1e-5) -> ConeScores:
    """Cone scores of every output column of `side` from its current .grad (call after backward)."""
    a = side.down.detach().float()
    b = side.up.detach().float()
    d_a = _grad_f32(side.down)
    d_b = _grad_f32(side.up)
    grad = torch.zeros(b.shape[0], a.shape[1], device=a.device, dtype=torch.float32)
    # a missing gradient (frozen factor) contributes nothing, as in the authors' code
    if d_b is not None:
        grad.addmm_(d_b, a)
    if d_a is not None:
        grad.addmm_(b, d_a)
    grad.mul_(side.merger.detach().float()[:, None])
    cone = grad.mul_(b @ a).abs_()  # reuse G's storage: only one dense out x in buffer beyond W
    count = (cone > threshold).sum(dim=1)
    # a non-finite step (fp16 overflow) must not rank its NaN columns first
    magnitude = torch.nan_to_num(cone.sum(dim=1), nan=0.0)
    return ConeScores(count=count, magnitude=magnitude, in_features=a.shape[1])


def rank_columns(scores: ConeScores) -> torch.Tensor:
    """All column indices, best first: higher density, then higher magnitude, then lower index."""
    # Two stable sorts = a lexicographic sort; the count is an integer, so density ties are exact.
    by_magnitude = torch.sort(scores.magnitude, descending=True, stable=True).indices
    by_count = torch.sort(scores.count[by_magnitude], descending=True, stable=True).indices
    return by_magnitude[by_count]


def select_columns(scores: ConeScores, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The k best columns (int64 indices, best first), never one where `exclude` (bool/0-1, (out,)) is set.

    Exactly k unless fewer than k columns are allowed; then every allowed column is returned (possibly
    none). The authors' strict "> k-th best" comparison could return fewer than k even with room; this does not.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    order = rank_columns(scores)
    if exclude is not None:
        if exclude.shape != scores.count.shape:
            raise ValueError(f"exclude has shape {tuple(exclude.shape)}, scores {tuple(scores.count.shape)}")
        order = order[~exclude.to(device=order.device, dtype=torch.bool)[order]]
    return order[:k]


def columns_per_round(out_features: int, ratio: float) -> int:
    """K = floor(ratio * out), at least 1 when ratio > 0 (a tiny layer would otherwise never get a column)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"column ratio must be in [0, 1], got {ratio}")
    if ratio == 0.0:
        return 0
    # the epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 at 29
    return min(out_features, max(1, math.floor(out_features * ratio + 1e-9)))


def effective_mask(side: LoRAFactors) -> torch.Tensor:
    """The mask as it acts while masks are on: M for a masked side, all ones for relaxed / off sides."""
    if side.mask_mode == "masked":
        return side.mask
    return torch.ones_like(side.mask)


def overlap_columns(dual: DualLoRA) -> torch.Tensor:
    """Bool (out,): columns both LoRAs hold (a relaxed side holds all). Empty if a side is absent."""
    if dual.content is None or dual.style is None:
        ref = (dual.content or dual.style).mask
        return torch.zeros_like(ref, dtype=torch.bool)
    return (effective_mask(dual.content) > 0) & (effective_mask(dual.style) > 0)
