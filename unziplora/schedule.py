"""The column-separation schedule (masks, mergers, L_orth) of method.md "Column separation".

With g the number of finished optimiser steps and t = ceil(S / sample_times), acting after backward and
before the optimiser step:

    g % t == 0   reset         masks off (all columns next forward), mergers frozen, L_orth off
    g % t == 1   select        score from this step's gradients, add top-K columns to each mask (union),
                               content first; masks on, mergers unfrozen, L_orth on from the next forward
    otherwise    overlap_only  merger gradients zeroed except on columns both masks hold
    finish()                   masks on (then save)

Training-loop order:

    loss = loss_rec + (orth_loss(lora) if sched.orth_active else 0)
    loss.backward()
    scaler.unscale_(opt)                 # if a GradScaler is used: scores and clipping want true gradients
    sched.before_optimizer_step(g)       # before clipping, so the norm sees the zeroed merger gradients
    clip_grad_norm_(...); opt.step(); sched.after_optimizer_step(); opt.zero_grad(set_to_none=True)
    ...
    sched.finish()

Frozen mergers: requires_grad is switched off *and* .grad set to None. torch's Adam/AdamW skip a parameter
whose .grad is None entirely: no momentum step and no weight decay. A zeroed gradient would not stop them,
because Adam keeps moving a parameter on its first moment. Because requires_grad is off, the forward at
g % t == 1 produces no merger gradient either, so the mergers stay still through both optimiser steps of
the window. Build the optimiser before the first reset: ContentStyleLoRA.parameter_groups() lists only
mergers with requires_grad (that is how it leaves them out in modes without column separation), so called
inside a frozen window it would silently leave them out of the optimiser for good.

Between selections the off-overlap merger gradients are zero, not None, so AdamW's decoupled weight decay
(lr * wd = 5e-7 a step with the paper's values) still shrinks those mergers a hair; their Adam moments stay
zero (the overlap only grows), so nothing else moves them. The authors' loop behaves the same.

Relaxed sides (a LoRA's own blocks under block separation) are never masked: they count as all ones, both
for the overlap and in L_orth, as in the authors' code. Modes without column separation (prompt, naive,
blora) get an inert schedule: it never touches masks, mergers or gradients.
"""

from __future__ import annotations

import math
import warnings
import weakref
from enum import Enum

import torch

from .columns import cone_scores, columns_per_round, overlap_columns, select_columns


class Action(str, Enum):
    RESET = "reset"
    SELECT = "select"
    OVERLAP_ONLY = "overlap_only"
    IDLE = "idle"


def schedule_period(total_steps: int, sample_times: int) -> int:
    """t = ceil(S / sample_times), at least 2 (with t = 1 every step is a reset and nothing is ever selected)."""
    if sample_times < 1:
        raise ValueError(f"sample_times must be >= 1, got {sample_times}")
    return max(2, math.ceil(total_steps / sample_times))


def selection_steps(total_steps: int, sample_times: int) -> list[int]:
    """The steps g (1-based, as the loss plot counts) at which columns are selected: g % t == 1."""
    if total_steps < 1 or sample_times < 1:
        return []
    return list(range(1, total_steps + 1, schedule_period(total_steps, sample_times)))


def _sides(lora):
    for path, block, dual in lora.items():
        for name, side in dual.sides():
            yield path, block, dual, name, side


class ColumnSchedule:
    """Drives masks, mergers and L_orth over S steps for a ContentStyleLoRA-like `lora`.

    `lora` needs `.items()` -> (path, block_path, DualLoRA), `.set_masks_on(bool)` and `.mode` (ModePreset).
    """

    def __init__(self, lora, total_steps: int, sample_times: int = 3, column_ratio: float = 0.1,
                 threshold: float = 1e-5):
        self.lora = lora
        self.total_steps = int(total_steps)
        self.sample_times = int(sample_times)
        self.column_ratio = float(column_ratio)
        self.threshold = float(threshold)
        self.period = schedule_period(self.total_steps, self.sample_times)
        columns_per_round(1, self.column_ratio)  # validates the ratio up front
        self.active = bool(lora.mode.column_separation) and any(
            side.mask_mode == "masked" for *_, side in _sides(lora))
        if self.active and self.total_steps < 2:
            raise ValueError("column separation needs at least 2 steps (a reset, then a selection); "
                             f"got total_steps={self.total_steps}")
        self._masks_on = False
        self._frozen = False
        self._orth = False
        self.rounds = 0
        self.last_step: int | None = None
        self._keep: list | None = None  # [(merger, 0/1 overlap)]; dropped at each selection and load
        # (path, side) -> int64 indices picked at the latest selection (before the union); for logs and tests
        self.last_picks: dict[tuple[str, str], torch.Tensor] = {}

    # -- queries -----------------------------------------------------------------------------------------

    def action_for(self, g: int) -> Action:
        if not self.active:
            return Action.IDLE
        phase = g % self.period
        if phase == 0:
            return Action.RESET
        if phase == 1:
            return Action.SELECT
        return Action.OVERLAP_ONLY

    @property
    def orth_active(self) -> bool:
        """Whether the next forward's loss includes L_orth."""
        return self._orth

    @property
    def masks_on(self) -> bool:
        return self._masks_on

    @property
    def mergers_frozen(self) -> bool:
        return self._frozen

    # -- the loop hooks ----------------------------------------------------------------------------------

    def before_optimizer_step(self, g: int) -> Action:
        """Apply step g's action (g = optimiser steps finished so far); call after backward."""
        action = self.action_for(g)
        if action is Action.RESET:
            self._reset()
        elif action is Action.SELECT:
            self._select()
        elif action is Action.OVERLAP_ONLY:
            self._zero_merger_grads_off_overlap()
        self.last_step = g
        return action

    def after_optimizer_step(self) -> None:
        if not self.active:
            return
        # foreach: two fused launches instead of one clamp per merger (1120 on SDXL), every step
        merger_list = [side.merger for *_, side in _sides(self.lora)]
        with torch.no_grad():
            torch._foreach_clamp_min_(merger_list, 0.0)
            torch._foreach_clamp_max_(merger_list, 1.0)

    def finish(self) -> None:
        """End of training: masks on (what is saved and sampled is the masked LoRA)."""
        if self.active:
            self._set_masks_on(True)

    # -- actions -----------------------------------------------------------------------------------------

    def _set_masks_on(self, on: bool) -> None:
        self.lora.set_masks_on(on)
        self._masks_on = on

    def _set_frozen(self, frozen: bool) -> None:
        for *_, side in _sides(self.lora):
            # None, not zero: AdamW skips None-grad params (no momentum, no weight decay)
            side.merger.grad = None
            side.merger.requires_grad_(not frozen)
        self._frozen = frozen

    def _reset(self) -> None:
        self._set_masks_on(False)
        self._set_frozen(True)
        self._orth = False

    @torch.no_grad()
    def _select(self) -> None:
        mode = self.lora.mode
        picks = {}
        for path, block, dual in self.lora.items():
            content, style = dual.content, dual.style
            # content first: in shared blocks style's pick must see content's mask after this round's union
            if content is not None and content.mask_mode == "masked":
                picks[(path, "content")] = self._pick_into(content)
            if style is not None and style.mask_mode == "masked":
                exclude = None
                if content is not None and content.mask_mode == "masked" and mode.style_avoids_content(block):
                    exclude = content.mask > 0
                picks[(path, "style")] = self._pick_into(style, exclude)
        self.last_picks = picks
        self._keep = None
        self._set_masks_on(True)
        self._set_frozen(False)
        self._orth = True
        self.rounds += 1

    def _pick_into(self, side, exclude=None) -> torch.Tensor:
        k = columns_per_round(side.mask.numel(), self.column_ratio)
        idx = select_columns(cone_scores(side, self.threshold), k, exclude)
        side.mask[idx.to(side.mask.device)] = 1.0
        return idx

    @torch.no_grad()
    def _zero_merger_grads_off_overlap(self) -> None:
        if self._keep is not None and self._keep and self._keep[0][1].device != self._keep[0][0].device:
            self._keep = None  # the LoRA moved to another device
        if self._keep is None:
            self._keep = []
            for _, _, dual in self.lora.items():
                keep = overlap_columns(dual).float()
                self._keep += [(side.merger, keep) for _, side in dual.sides()]
        pairs = [(m.grad, keep) for m, keep in self._keep if m.grad is not None]
        if pairs:
            # One fused multiply, every step. A NaN gradient stays NaN off the overlap, but such a step is
            # skipped by the GradScaler or ruins the factors anyway.
            grads, keeps = zip(*pairs)
            torch._foreach_mul_(list(grads), list(keeps))

    # -- checkpoints -------------------------------------------------------------------------------------

    def _masked_sides(self):
        return {f"{path}:{name}": side for path, _, _, name, side in _sides(self.lora) if side.mask_mode == "masked"}

    def state_dict(self) -> dict:
        return {
            "version": 1,
            "total_steps": self.total_steps,
            "sample_times": self.sample_times,
            "column_ratio": self.column_ratio,
            "threshold": self.threshold,
            "period": self.period,
            "active": self.active,
            "masks_on": self._masks_on,
            "mergers_frozen": self._frozen,
            "orth_active": self._orth,
            "rounds": self.rounds,
            "last_step": self.last_step,
            "masks": {key: side.mask.detach().bool().cpu().clone() for key, side in self._masked_sides().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown column schedule state version {state.get('version')!r}")
        if bool(state["active"]) != self.active:
            raise ValueError("column schedule state is for a different mode (column separation on/off differs)")
        if state["period"] != self.period:
            warnings.warn(f"resuming with schedule period {self.period}, the checkpoint ran with {state['period']}: "
                          "rounds fall at different steps from here on", stacklevel=2)
        sides = self._masked_sides()
        saved = state["masks"]
        if set(saved) != set(sides):
            missing, extra = sorted(set(sides) - set(saved)), sorted(set(saved) - set(sides))
            raise ValueError(f"column schedule masks do not match the LoRA: missing {missing[:3]}, extra {extra[:3]}")
        with torch.no_grad():
            for key, side in sides.items():
                mask = saved[key]
                if mask.shape != side.mask.shape:
                    raise ValueError(f"mask {key}: shape {tuple(mask.shape)} != {tuple(side.mask.shape)}")
                side.mask.copy_(mask.to(device=side.mask.device, dtype=side.mask.dtype))
        self._keep = None
        self.rounds = int(state["rounds"])
        self.last_step = state["last_step"]
        self._orth = bool(state["orth_active"])
        if self.active:
            self._set_masks_on(bool(state["masks_on"]))
            self._set_frozen(bool(state["mergers_frozen"]))


# lora -> (the layers' side ids, device, relaxed flags, column weights): constant for a given LoRA
_ORTH_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _orth_plan(lora, pairs):
    ids = tuple(id(x) for pair in pairs for x in pair)
    device = pairs[0][0].merger.device
    plan = _ORTH_PLANS.get(lora)
    if plan is None or plan[0] != ids or plan[1] != device:
        def relaxed(side):
            return torch.full_like(side.mask, float(side.mask_mode != "masked"))

        weights = [torch.full_like(c.mask, 1.0 / (len(pairs) * c.mask.numel())) for c, _ in pairs]
        plan = (ids, device, torch.cat([relaxed(c) for c, _ in pairs]), torch.cat([relaxed(s) for _, s in pairs]),
                torch.cat(weights))
        _ORTH_PLANS[lora] = plan
    return plan[2:]


def orth_loss(lora, lam: float = 0.5) -> torch.Tensor:
    """L_orth = lam * mean over layers of mean over columns |m_c M_c * m_s M_s|.

    Layers count where both LoRAs are present and at least one is masked; a relaxed side's M is all ones.
    Zero (a plain tensor) when no layer qualifies, e.g. in modes without column separation.
    Computed on all layers at once (a few concatenations) rather than per layer: on SDXL it runs every step
    over 560 layers, where a per-layer loop costs thousands of small kernels forward and backward.
    """
    pairs = [(d.content, d.style) for _, _, d in lora.items()
             if d.content is not None and d.style is not None and "masked" in (d.content.mask_mode, d.style.mask_mode)]
    if not pairs:
        device = None
        for _, _, dual in lora.items():
            device = (dual.content or dual.style).merger.device
            break
        return torch.zeros((), device=device)
    relaxed_c, relaxed_s, weights = _orth_plan(lora, pairs)
    m_c = torch.cat([c.merger for c, _ in pairs])
    m_s = torch.cat([s.merger for _, s in pairs])
    mask_c = torch.maximum(torch.cat([c.mask for c, _ in pairs]), relaxed_c)
    mask_s = torch.maximum(torch.cat([s.mask for _, s in pairs]), relaxed_s)
    return lam * ((m_c * mask_c * m_s * mask_s).abs() * weights).sum()
