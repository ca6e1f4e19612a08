"""The content + style LoRA pair over every attention linear of an SDXL UNet.

One DualLoRA per target linear (targets.py), sides and mask modes per block from the mode preset
(roles.py). For training, `attach` adds each linear's delta to its output with a forward hook, except on
attn2 to_k / to_v, whose three-stream delta is added by the attention replace patch in kv_patch.py.

Hooks rather than wrapper modules: module paths, state_dict keys and ComfyUI's own Linear class (with its
weight_function / cast logic) stay exactly as they are, and removing the handles restores the model
untouched; the base weights are never written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .dual_lora import SIDES, DualLoRA
from .step_factors import make_groups, prepare_groups
from .roles import ModePreset, get_mode
from .targets import AttnTarget, find_targets, kv_slots, unet_of


def module_key(path: str) -> str:
    """ModuleDict keys may not contain '.'."""
    return path.replace(".", "__")


class _AddDelta:
    """Forward hook: y = W0 x + delta(x) (content and style read the same input here)."""

    def __init__(self, dual: DualLoRA):
        self.dual = dual

    def __call__(self, module, args, output):
        delta = self.dual(args[0])
        return output if delta is None else output + delta


class ContentStyleLoRA(nn.Module):
    def __init__(self, model_or_targets, mode: ModePreset | str = "unziplora", rank: int = 64, *,
                 seed: int | None = None, generator: torch.Generator | None = None):
        """model_or_targets: a UNet / BaseModel / ModelPatcher, or a list of AttnTarget.

        seed or generator makes the initialisation reproducible (generator wins if both are given).
        """
        super().__init__()
        self.mode = get_mode(mode) if isinstance(mode, str) else mode
        self.rank = rank
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        records = model_or_targets if isinstance(model_or_targets, (list, tuple)) else find_targets(model_or_targets)
        self.mode = self.mode.for_targets(records)  # roles by place: SSD-1B / Vega / KOALA differ from SDXL
        self.targets: dict[str, AttnTarget] = {}
        self.duals = nn.ModuleDict()
        for t in records:
            content, style = self.mode.sides_for_block(t.block)
            if content is None and style is None:
                continue  # B-LoRA: block without a LoRA
            self.targets[t.path] = t
            self.duals[module_key(t.path)] = DualLoRA(t.in_features, t.out_features, rank, content=content,
                                                      style=style, init=self.mode.init, generator=generator)
        if not self.targets:
            raise ValueError(f"mode {self.mode.name!r} puts no LoRA on any of the {len(records)} linears")
        if not self.mode.column_separation:
            # without column separation the mergers are constant 1 (no masks, no overlap to arbitrate)
            for _, side in self._sides():
                side.merger.requires_grad_(False)
        self._handles: list = []
        self._attached_to: int | None = None

    # -- structure -------------------------------------------------------------------------------
    def items(self) -> Iterator[tuple[str, str, DualLoRA]]:
        """(LDM path, block path, DualLoRA) for every linear that carries a LoRA, in model order."""
        for path, t in self.targets.items():
            yield path, t.block, self.duals[module_key(path)]

    def dual(self, path: str) -> DualLoRA:
        return self.duals[module_key(path)]

    def blocks(self) -> list[str]:
        return list(dict.fromkeys(t.block for t in self.targets.values()))

    def kv_slots(self) -> dict[tuple, dict[str, DualLoRA]]:
        """ComfyUI transformer key -> {"to_k": DualLoRA, "to_v": DualLoRA} for the attn2 K/V patches."""
        return kv_slots(self.targets, self.dual)

    def _sides(self, side: str | None = None):
        for _, _, dual in self.items():
            for name, factors in dual.sides():
                if side is None or name == side:
                    yield name, factors

    # -- training-facing API ---------------------------------------------------------------------
    @property
    def masks_on(self) -> bool:
        return any(d.masks_on for _, _, d in self.items())

    def set_masks_on(self, on: bool) -> None:
        for _, _, dual in self.items():
            dual.masks_on = bool(on)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Factors of each LoRA (A and B) and the trainable mergers of both, for separate optimiser groups."""
        groups: dict[str, list[nn.Parameter]] = {"content": [], "style": [], "mergers": []}
        for name, factors in self._sides():
            groups[name] += [factors.down, factors.up]
            if factors.merger.requires_grad:
                groups["mergers"].append(factors.merger)
        return groups

    def num_parameters(self, side: str | None = None, mergers: bool = False) -> int:
        """Factor parameters (A and B) of one LoRA ("content"/"style") or both; mergers on request."""
        if side is not None and side not in SIDES:
            raise ValueError(f"side must be one of {SIDES} or None, got {side!r}")
        total = 0
        for _, f in self._sides(side):
            total += f.down.numel() + f.up.numel() + (f.merger.numel() if mergers else 0)
        return total

    def num_linears(self, side: str | None = None) -> int:
        return sum(1 for _, _, d in self.items() if side is None or getattr(d, side) is not None)

    @contextlib.contextmanager
    def step_factors(self, device, dtype, grouped: bool = True):
        """One training step's factors, formed once before the forward: casts to the compute dtype, the column
        scales folded into B and content + style concatenated into one rank-2r LoRA wherever both read the
        image tokens. Forward and backward (gradient checkpointing recomputes inside backward) must both run
        inside; leave before the optimiser step, which changes the factors in place.

        Formed here, never lazily inside a forward: a checkpointed layer's recomputation must save the same
        tensors as its first run.

        grouped (default): stacked per group of alike linears (step_factors.py), a dozen groups on SDXL instead of
        560 per-linear preparations: fewer GPU kernel launches, and no slower on a CPU (tiny SDXL, 12 steps, three
        runs each: 0.26-0.29 s vs 0.25-0.33 s per step). grouped=False prepares linear by linear (A/B benchmarks);
        both give the same numbers (tests/test_step_ops.py)."""
        device = torch.device(device)
        try:
            items = [(self.dual(path), not t.is_cross_kv) for path, t in self.targets.items()]
            if grouped:
                prepare_groups(make_groups(items), device, dtype)
            else:
                for dual, fused in items:
                    dual._prepared = dual.step_factors(device, dtype, fused=fused)
            yield self
        finally:
            for _, _, dual in self.items():
                dual._prepared = None

    # -- static merge (everything but attn2 K/V at inference) ------------------------------------
    def merged_factors(self, path: str, sides=SIDES) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(up, down) with up @ down = sum over sides of diag(m*M) B A, as one rank-(r*sides) LoRA.

        Uses the current masks_on state, so it is exactly the delta the forward adds for equal inputs.
        """
        dual = self.dual(path)
        ups, downs = [], []
        for name, f in dual.sides():
            if name in sides:
                ups.append(f.up * f.column_scale(dual.masks_on)[:, None])
                downs.append(f.down)
        if not ups:
            return None
        return torch.cat(ups, 1).detach(), torch.cat(downs, 0).detach()

    # -- training attachment ---------------------------------------------------------------------
    def attach(self, model) -> "ContentStyleLoRA":
        """Hook every LoRA linear but attn2 K/V of a (private) UNet; attn2 K/V go through kv_patch."""
        if self._handles:
            raise RuntimeError("ContentStyleLoRA is already attached; detach() first")
        unet = unet_of(model)
        handles = []
        try:
            for path, t in self.targets.items():
                module = unet.get_submodule(path)
                if (module.in_features, module.out_features) != (t.in_features, t.out_features):
                    raise ValueError(f"{path}: model has {module.in_features}->{module.out_features}, "
                                     f"LoRA was built for {t.in_features}->{t.out_features}")
                if not t.is_cross_kv:
                    handles.append(module.register_forward_hook(_AddDelta(self.dual(path))))
        except Exception:
            for h in handles:
                h.remove()
            raise
        self._handles = handles
        self._attached_to = id(unet)
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._attached_to = None

    def is_attached_to(self, model) -> bool:
        return self._attached_to is not None and self._attached_to == id(unet_of(model))

    def extra_repr(self) -> str:
        return f"mode={self.mode.name}, rank={self.rank}, linears={len(self.targets)}"
