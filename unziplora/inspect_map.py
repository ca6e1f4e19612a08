"""What a content / style pair holds, per block and per linear, as plain numbers for the Inspect image.

Per linear (one output "column" = one output channel): which columns each side's hard mask holds, their
overlap, the mergers, and the norm of each column's delta row (scale x up_i @ down). Per block: kept fractions,
the overlap, the delta norm ||B A||_F of each side (all its linears together) and the mergers on the overlap
(the only columns where training moves them).

Masks come from the pair when it has them (a trained run's bundle). UnZipLoRA files without their bundle still
show them: training bakes each mask into lora_up, so a held column is a non-zero row of up; that is only read
for files whose metadata says they were trained with column separation. Other pairs (B-LoRA, plain LoRAs) have
no masks: their map shows delta norms only.

Norms are computed from the factors (||B_i A||^2 = B_i (A A^T) B_i^T), never from the dense out x in delta.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from .roles import BLORA_BLOCKS, MODES

SIDES = ("content", "style")
_ATTN_ORDER = {"attn1": 0, "attn2": 1}
_PROJ_ORDER = {"to_q": 0, "to_k": 1, "to_v": 2, "to_out.0": 3}
_SEQ_ORDER = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}


@dataclass
class LinearMap:
    path: str
    block: str
    transformer: int  # index inside the block's SpatialTransformer
    attention: str  # attn1 | attn2
    projection: str  # to_q | to_k | to_v | to_out.0
    out_features: int
    masks: dict = field(default_factory=dict)  # side -> bool [out]; missing = no mask known for that side
    mergers: dict = field(default_factory=dict)  # side -> float [out]; missing = all ones
    column_norms: dict = field(default_factory=dict)  # side -> float [out]; missing = the side has no LoRA here

    @property
    def short(self) -> str:
        return f"{self.attention}.{self.projection.replace('to_', '').replace('.0', '')}"

    def held(self, side: str) -> np.ndarray | None:
        """Columns a side holds: its mask, or (no mask known) every column where it has a LoRA."""
        if side in self.masks:
            return self.masks[side]
        if side in self.column_norms:
            return np.ones(self.out_features, dtype=bool)
        return None


@dataclass
class BlockSummary:
    block: str
    role: str  # content | style | shared | "" (unknown)
    role_known: bool
    linears: list
    kept: dict = field(default_factory=dict)  # side -> fraction of the block's columns held (masks only)
    overlap: float | None = None  # fraction held by both (masks only)
    delta_norm: dict = field(default_factory=dict)  # side -> ||B A||_F over the block
    overlap_merger: dict = field(default_factory=dict)  # side -> mean merger on the overlap columns


@dataclass
class PairMap:
    name: str
    kind: str
    has_masks: bool
    mask_source: str  # "bundle" | "lora_up" | "" (none)
    mode: str  # the training mode if known
    blocks: list
    problems: list = field(default_factory=list)  # what is wrong in the files (non-finite weights), by file

    def block(self, name: str) -> BlockSummary:
        return next(b for b in self.blocks if b.block == name)


def split_path(path: str) -> tuple[str, int, str, str]:
    """"output_blocks.1.1.transformer_blocks.3.attn2.to_k" -> ("output_blocks.1.1", 3, "attn2", "to_k")."""
    m = re.match(r"^(.*)\.transformer_blocks\.(\d+)\.(attn[12])\.(to_q|to_k|to_v|to_out\.0)$", path)
    if not m:
        raise ValueError(f"{path}: not an attention linear of a SpatialTransformer")
    return m.group(1), int(m.group(2)), m.group(3), m.group(4)


def block_order(block: str) -> tuple:
    """UNet order: input_blocks by number, the middle block, output_blocks by number."""
    parts = block.split(".")
    nums = tuple(int(p) for p in parts[1:] if p.isdigit())
    return (_SEQ_ORDER.get(parts[0], 3), *nums)


def column_norms(weights) -> np.ndarray:
    """||scale * up_i @ down|| per output row i, from the factors; NaN for a row touched by a non-finite value."""
    down, up = weights.down.detach().float(), weights.up.detach().float()
    gram = down @ down.T  # [r, r]
    sq = ((up @ gram) * up).sum(dim=1).clamp_min(0.0)
    norms = (sq.sqrt() * abs(float(weights.scale))).cpu().numpy()
    bad = ~torch_finite_rows(up) | (not np.isfinite(gram.sum().item())) | (not np.isfinite(float(weights.scale)))
    norms[bad] = np.nan  # inf * 0 and friends would otherwise show a broken column as empty
    return norms


def torch_finite_rows(t) -> np.ndarray:
    return t.isfinite().all(dim=1).cpu().numpy()


def _mode_of(handle) -> str:
    """The training mode from the bundle's or a file's metadata; B-LoRA by how it was loaded; else unknown."""
    if handle.kind == "blora":
        return "blora"
    metas = [handle.metadata] + [getattr(handle, r).weights.metadata for r in SIDES if getattr(handle, r, None)]
    return next((m["unziplora.mode"] for m in metas if m and m.get("unziplora.mode") in MODES), "")


def _role(mode: str, block: str) -> tuple[str, bool]:
    if mode == "blora":
        return BLORA_BLOCKS.get(block, ""), True
    if mode in MODES and MODES[mode].column_separation:
        return MODES[mode].role(block), True
    if mode in MODES:  # trained without column separation: every block is shared
        return "shared", True
    return "", False


def _as_bool(t) -> np.ndarray:
    return (t.detach().flatten().float() != 0).cpu().numpy()


def _as_float(t) -> np.ndarray:
    return t.detach().flatten().float().cpu().numpy()


def pair_map(handle) -> PairMap:
    """The map of a ContentStyleHandle (unziplora.pair): a trained run, two files or a B-LoRA."""
    mode = _mode_of(handle)
    column_mode = mode in MODES and MODES[mode].column_separation
    linears: dict[str, LinearMap] = {}
    sources = set()
    problems = []
    for role in SIDES:
        side = getattr(handle, role, None)
        if side is None:
            continue
        from_up = not side.masks and column_mode
        bad_weights, bad_mergers = 0, 0
        for path, w in side.weights.items():
            block, tb, attn, proj = split_path(path)
            lin = linears.setdefault(path, LinearMap(path, block, tb, attn, proj, w.out_features))
            norms = column_norms(w)
            bad_weights += int(not np.isfinite(norms).all())
            lin.column_norms[role] = norms
            if side.masks.get(path) is not None:
                lin.masks[role] = _as_bool(side.masks[path])
                sources.add("bundle")
            elif from_up:
                lin.masks[role] = norms > 0  # the baked mask: unselected rows of up are exactly zero
                sources.add("lora_up")
            if side.mergers.get(path) is not None:
                lin.mergers[role] = _as_float(side.mergers[path])
                bad_mergers += int(not np.isfinite(lin.mergers[role]).all())
        if bad_weights:
            problems.append(f"{role} LoRA {os.path.basename(side.source)}: {bad_weights} of {len(side.weights)} "
                            "linears hold NaN or infinite weights (drawn red, norms shown as nan)")
        if bad_mergers:
            problems.append(f"{role} mergers {os.path.basename(side.merger_source or side.source)}: {bad_mergers} "
                            "linears have NaN or infinite mergers")
    by_block: dict[str, list] = {}
    for lin in sorted(linears.values(), key=lambda x: (block_order(x.block), x.transformer,
                                                        _ATTN_ORDER[x.attention], _PROJ_ORDER[x.projection])):
        by_block.setdefault(lin.block, []).append(lin)
    has_masks = bool(sources)
    blocks = [_summarise(b, lins, mode, has_masks) for b, lins in sorted(by_block.items(), key=lambda kv: block_order(kv[0]))]
    source = "bundle" if "bundle" in sources else ("lora_up" if sources else "")
    return PairMap(handle.name, handle.kind, has_masks, source, mode, blocks, problems)


def _summarise(block: str, lins: list, mode: str, has_masks: bool) -> BlockSummary:
    role, known = _role(mode, block)
    out = BlockSummary(block, role, known, lins)
    total = sum(lin.out_features for lin in lins)
    for side in SIDES:
        norms = [lin.column_norms[side] for lin in lins if side in lin.column_norms]
        if norms:
            out.delta_norm[side] = float(np.sqrt(sum(float((n.astype(np.float64) ** 2).sum()) for n in norms)))
    if not has_masks or not total:
        return out
    both = np.concatenate([_both(lin) for lin in lins])
    for side in SIDES:
        held = [lin.held(side) for lin in lins]
        out.kept[side] = float(sum(int(h.sum()) for h in held if h is not None)) / total
        merged = [lin.mergers[side][_both(lin)] for lin in lins if side in lin.mergers]
        values = np.concatenate(merged) if merged else np.zeros(0)
        if values.size:
            out.overlap_merger[side] = float(values.mean())
    out.overlap = float(both.sum()) / total
    return out


def _both(lin: LinearMap) -> np.ndarray:
    c, s = lin.held("content"), lin.held("style")
    if c is None or s is None:
        return np.zeros(lin.out_features, dtype=bool)
    return c & s


def merger_on(lin: LinearMap, side: str) -> float | None:
    """The mean merger of a side over the columns it holds (1 where no mergers are known)."""
    held = lin.held(side)
    if held is None or not held.any():
        return None
    merger = lin.mergers.get(side)
    return 1.0 if merger is None else float(merger[held].mean())


__all__ = ["BlockSummary", "LinearMap", "PairMap", "block_order", "column_norms", "merger_on", "pair_map",
           "split_path"]
