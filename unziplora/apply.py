"""Putting a content / style pair from files onto a ComfyUI model: the one function the Apply node calls.

    content, style   one side alone = an ordinary LoRA: the same weight patches ComfyUI's LoraLoader adds
                     (LoRAAdapter with the file's alpha, at the node's strength), mergers not used.
    both             y = W0 x + s_c (m_c . B_c A_c x_c) + s_s (m_s . B_s A_s x_s) on every LoRA linear, sides
                     taken from any two pairs (cross-image). Everywhere but attn2 to_k / to_v the inputs are
                     equal, so those deltas become static weight patches; the 140 attn2 K/V linears run the
                     three-stream replace patch of kv_patch.install, fed by UnZipLoRA Prompts.

Masks need no work here: the files bake them into `up` (M is 0/1, so m . M . B A = m . (M B) A).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kv_patch
from .lora_formats import shapes_from_model
from .pair import SIDES, ContentStyleHandle, PairSide
from .targets import find_targets, kv_slots

APPLY_MODES = ("both", "content", "style")


class _SideFactors:
    """One side on one linear with strength x alpha/rank x merger folded into the rows of `up`."""

    __slots__ = ("down", "up")

    def __init__(self, side: PairSide, path: str, strength: float):
        w = side.weights[path]
        self.down = w.down
        scale = side.column_scale(path, strength)
        self.up = (w.up.float() * scale[:, None]).to(w.up.dtype)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down.to(device=x.device, dtype=x.dtype)
        up = self.up.to(device=x.device, dtype=x.dtype)
        return F.linear(F.linear(x, down), up)


class InferenceDual:
    """DualLoRA's inference surface for the K/V patch: delta(x, x_c, x_s). Immutable once built, which lets the
    patch cache its deltas for a whole sampling run."""

    def __init__(self, content: _SideFactors | None, style: _SideFactors | None):
        self.content = content
        self.style = style

    def sides(self):
        return [(n, getattr(self, n)) for n in SIDES if getattr(self, n) is not None]

    def delta(self, x, x_c=None, x_s=None):
        streams = {"content": x if x_c is None else x_c, "style": x if x_s is None else x_s}
        out = None
        for name, side in self.sides():
            d = side.delta(streams[name])
            out = d if out is None else out + d
        return out


class InferencePair:
    """What kv_patch.install needs of a ContentStyleLoRA (targets, merged_factors, kv_slots), built from files."""

    def __init__(self, model, content: PairSide | None, style: PairSide | None, content_strength: float = 1.0,
                 style_strength: float = 1.0):
        all_targets = {t.path: t for t in find_targets(model)}
        self.targets = {}
        self._sides: dict[str, dict[str, _SideFactors]] = {}
        for role, side, strength in (("content", content, content_strength), ("style", style, style_strength)):
            if side is None or strength == 0:
                continue
            for path in side.weights:
                self.targets[path] = all_targets[path]  # validated by the caller: present and shaped alike
                self._sides.setdefault(path, {})[role] = _SideFactors(side, path, strength)
        self.targets = {p: t for p, t in all_targets.items() if p in self.targets}  # model order
        self._duals: dict[str, InferenceDual] = {}

    def merged_factors(self, path: str, sides=SIDES):
        """(up, down) of one rank-(r_c + r_s) LoRA whose product is the summed delta of the chosen sides."""
        factors = [f for role, f in self._sides.get(path, {}).items() if role in sides]
        if not factors:
            return None
        dtype = torch.promote_types(*(f.up.dtype for f in factors)) if len(factors) > 1 else factors[0].up.dtype
        return torch.cat([f.up.to(dtype) for f in factors], 1), torch.cat([f.down.to(dtype) for f in factors], 0)

    def dual(self, path: str) -> InferenceDual:
        if path not in self._duals:
            sides = self._sides[path]
            self._duals[path] = InferenceDual(sides.get("content"), sides.get("style"))
        return self._duals[path]

    def keep_only_kv(self) -> None:
        """After install the static layers live in the weight patches; only attn2 K/V run from here."""
        self._sides = {p: f for p, f in self._sides.items() if self.targets[p].is_cross_kv}

    def kv_slots(self) -> dict[tuple, dict[str, InferenceDual]]:
        return kv_slots(self.targets, self.dual)


def lora_patches(side: PairSide) -> dict:
    """{state-dict key: LoRAAdapter} exactly as comfy.lora.load_lora builds them for the same file."""
    from comfy.weight_adapter.lora import LoRAAdapter

    patches = {}
    for path, w in side.weights.items():
        alpha = None if w.scale == 1.0 else w.scale * w.rank  # load_lora: alpha from the file, or None
        patches[f"diffusion_model.{path}.weight"] = LoRAAdapter(set(), (w.up, w.down, alpha, None, None, None))
    return patches


def _add_plain(model_patcher, side: PairSide, strength: float):
    patches = lora_patches(side)
    m = model_patcher.clone()
    missing = set(patches) - set(m.add_patches(patches, strength))
    if missing:
        raise ValueError(f"{side.source}: {len(missing)} LoRA weights not found in the model, e.g. {min(missing)}")
    return m


def apply_pair(model_patcher, content: ContentStyleHandle | None, style: ContentStyleHandle | None = None,
               mode: str = "both", content_strength: float = 1.0, style_strength: float = 1.0):
    """A patched clone of `model_patcher`: content of `content`, style of `style` (default: the same pair).

    mode "content" / "style": that side alone as an ordinary LoRA (identical to LoraLoaderModelOnly on its file).
    mode "both": both sides with their mergers and prompt separation in cross-attention K/V.
    Every side used is checked against the model first: a LoRA for another base model fails naming its file.
    """
    if mode not in APPLY_MODES:
        raise ValueError(f"mode must be one of {', '.join(APPLY_MODES)}; got {mode!r}")
    content = content or style
    style = style or content
    if content is None:
        raise ValueError("UnZipLoRA Apply: connect a LoRA pair (content_from)")
    shapes = shapes_from_model(model_patcher)
    if mode != "both":
        side = (content if mode == "content" else style).side(mode)
        strength = content_strength if mode == "content" else style_strength
        side.validate(shapes)
        return model_patcher if strength == 0 else _add_plain(model_patcher, side, strength)
    c, s = content.side("content"), style.side("style")
    for side in (c, s):
        side.validate(shapes)
    if content_strength == 0 and style_strength == 0:
        return model_patcher
    pair = InferencePair(model_patcher, c, s, content_strength, style_strength)
    patched = kv_patch.install(model_patcher, pair)
    pair.keep_only_kv()
    return patched
