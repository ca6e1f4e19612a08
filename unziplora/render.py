"""Pictures of numbers, with PIL and numpy only: the Inspect map of a pair and the Score table.

Sized to stay readable when ComfyUI shrinks them into a node's preview (about 1200 px wide, 18-26 px text); the
legend is drawn on the image so a saved PNG explains itself.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .inspect_map import SIDES, PairMap, merger_on

BG = (24, 24, 28)
FG = (230, 230, 230)
DIM = (150, 150, 160)
# column categories; "both" is bright so the (small) overlap stands out against either side
COLORS = {"none": (48, 48, 56), "content": (236, 134, 36), "style": (58, 128, 240), "both": (250, 236, 110)}
BAD = (220, 30, 60)  # non-finite weights or mergers
ROLE_COLORS = {"content": COLORS["content"], "style": COLORS["style"], "shared": (170, 170, 180), "": DIM}

WIDTH = 1200
MAP_X, MAP_W = 260, 560
MERGER_X, MERGER_W = 830, 44  # two strips of 20 px: content merger, style merger
SUMMARY_X = 888
MIN_ROW = 76
MAX_SIDE = 4096  # no picture the pack draws is larger, whatever its input: a bound on memory, not on taste


def font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def to_image_tensor(image: Image.Image):
    """PIL RGB -> ComfyUI IMAGE [1, H, W, 3] float in 0..1."""
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def _bin_columns(rgb: np.ndarray, width: int) -> np.ndarray:
    """[out, 3] colours -> [width, 3]: averaged when there are more columns than pixels, repeated otherwise."""
    out = rgb.shape[0]
    if out >= width:
        idx = np.arange(out) * width // out
        acc = np.zeros((width, 3), dtype=np.float64)
        np.add.at(acc, idx, rgb)
        return acc / np.bincount(idx, minlength=width)[:, None]
    return rgb[np.arange(width) * out // width]


def mask_colors(lin) -> np.ndarray:
    """[out, 3] colours of one linear's columns by who holds them."""
    c, s = lin.held("content"), lin.held("style")
    c = np.zeros(lin.out_features, bool) if c is None else c
    s = np.zeros(lin.out_features, bool) if s is None else s
    rgb = np.empty((lin.out_features, 3), dtype=np.float64)
    for name, where in (("none", ~c & ~s), ("content", c & ~s), ("style", s & ~c), ("both", c & s)):
        rgb[where] = COLORS[name]
    return rgb


def norm_colors(lin, scale: dict) -> np.ndarray:
    """[out, 3]: content's column delta norms in orange plus style's in blue (no masks: norms are all there is)."""
    rgb = np.tile(np.array(COLORS["none"], dtype=np.float64), (lin.out_features, 1))
    bad = np.zeros(lin.out_features, dtype=bool)
    for side in SIDES:
        n = lin.column_norms.get(side)
        if n is not None and scale.get(side):
            bad |= ~np.isfinite(n)
            rgb += np.clip(np.nan_to_num(n / scale[side], nan=0.0, posinf=1.0), 0, 1)[:, None] * np.array(COLORS[side], dtype=np.float64)
    rgb[bad] = BAD
    return np.clip(rgb, 0, 255)


def _norm_scale(block) -> dict:
    """Per side, the 99th percentile of column norms in the block: one hot column must not black out the rest."""
    out = {}
    for side in SIDES:
        vals = [lin.column_norms[side] for lin in block.linears if side in lin.column_norms]
        vals = np.concatenate(vals) if vals else np.zeros(0)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            out[side] = float(np.percentile(vals, 99)) or 1.0
    return out


def _row_height(n_linears: int) -> tuple[int, int]:
    lh = max(1, min(9, MIN_ROW // max(n_linears, 1)))
    return lh, max(MIN_ROW, lh * n_linears)


def _num(v: float) -> str:
    if not np.isfinite(v):
        return "nan" if np.isnan(v) else "inf"
    return f"{v:.0f}" if v >= 1000 else f"{v:.3g}"  # never "1.53e+03" next to "841"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def check_size(what: str, width: int, height: int) -> None:
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"{what} would be {width} x {height} px: at most {MAX_SIDE} px a side is drawn")


def render_pair_map(pm: PairMap) -> Image.Image:
    rows = [(b, *_row_height(len(b.linears))) for b in pm.blocks]
    header_h = 150 + 22 * len(pm.problems)
    height = header_h + sum(h + 6 for _, _, h in rows) + 16
    check_size(f"the map of {pm.name} ({len(pm.blocks)} blocks)", WIDTH, height)
    img = Image.new("RGB", (WIDTH, height), BG)
    d = ImageDraw.Draw(img)
    f_title, f_text, f_small = font(26), font(20), font(17)
    source = {"bundle": "masks from the bundle", "lora_up": "masks read from lora_up (bundle not found)",
              "": "no masks: delta norms only"}[pm.mask_source]
    mode = f" · mode {pm.mode}" if pm.mode else ""
    d.text((12, 10), f"UnZipLoRA Inspect: {pm.name} [{pm.kind}]{mode} · {source}", fill=FG, font=f_title)
    for k, problem in enumerate(pm.problems):
        d.text((12, 48 + 22 * k), problem, fill=BAD, font=f_small)
    off = 22 * len(pm.problems)
    x = 12
    if pm.has_masks:
        legend = [("content", "content only"), ("style", "style only"), ("both", "both (overlap)"), ("none", "neither")]
        for key, text in legend:
            d.rectangle((x, 52 + off, x + 22, 72 + off), fill=COLORS[key])
            d.text((x + 30, 51 + off), text, fill=FG, font=f_text)
            x += 46 + int(d.textlength(text, font=f_text))
    else:
        for side in SIDES:
            d.rectangle((x, 52 + off, x + 22, 72 + off), fill=COLORS[side])
            text = f"{side}: brighter = larger delta per column"
            d.text((x + 30, 51 + off), text, fill=FG, font=f_text)
            x += 46 + int(d.textlength(text, font=f_text))
    d.text((12, 84 + off), "rows in UNet order; in each, one line per linear: attn1 q k v out, attn2 q k v out, "
                     "per transformer block. x = output column.", fill=DIM, font=f_small)
    d.text((12, 106 + off), "merger strips: mean merger on held columns (c | s, bright = 1). ||BA|| bars share one scale.",
           fill=DIM, font=f_small)
    d.text((12, 126 + off), "block · role", fill=DIM, font=f_small)
    d.text((MAP_X, 126 + off), "output columns", fill=DIM, font=f_small)
    d.text((MERGER_X, 126 + off), "m c|s", fill=DIM, font=f_small)
    d.text((SUMMARY_X, 126 + off), "kept c / s · overlap", fill=DIM, font=f_small)
    top_norm = max([v for b in pm.blocks for v in b.delta_norm.values() if np.isfinite(v)] + [1e-12])
    pixels = np.asarray(img).copy()
    y = header_h
    for block, lh, h in rows:
        scale = _norm_scale(block)
        for i, lin in enumerate(block.linears):
            rgb = mask_colors(lin) if pm.has_masks else norm_colors(lin, scale)
            strip = _bin_columns(rgb, MAP_W).round().astype(np.uint8)
            y0 = y + i * lh
            pixels[y0:y0 + lh, MAP_X:MAP_X + MAP_W] = strip[None]
            for k, side in enumerate(SIDES):
                m = merger_on(lin, side)
                if m is not None:
                    color = (np.array(BAD) if not np.isfinite(m) else
                             np.array(COLORS[side], dtype=np.float64) * (0.15 + 0.85 * np.clip(m, 0, 1))).astype(np.uint8)
                    xs = MERGER_X + k * 22
                    pixels[y0:y0 + lh, xs:xs + 20] = color
        y += h + 6
    img = Image.fromarray(pixels)
    d = ImageDraw.Draw(img)
    y = header_h
    for block, _lh, h in rows:
        d.text((12, y + 2), block.block, fill=FG, font=f_text)
        role = (block.role or "role unknown") + ("" if block.role_known else "")
        d.text((12, y + 28), role, fill=ROLE_COLORS.get(block.role, DIM), font=f_text)
        n_tb = len({lin.transformer for lin in block.linears})
        d.text((12, y + 52), f"{len(block.linears)} linears, depth {n_tb}", fill=DIM, font=f_small)
        if pm.has_masks:
            line = f"{_pct(block.kept.get('content'))} / {_pct(block.kept.get('style'))} · {_pct(block.overlap)}"
            d.text((SUMMARY_X, y + 2), line, fill=FG, font=f_text)
        norms = " / ".join(_num(block.delta_norm[s]) if s in block.delta_norm else "-" for s in SIDES)
        d.text((SUMMARY_X, y + 26), f"||BA|| {norms}", fill=FG, font=f_small)
        for k, side in enumerate(SIDES):
            if side in block.delta_norm and np.isfinite(block.delta_norm[side]):
                length = int(round((WIDTH - SUMMARY_X - 16) * block.delta_norm[side] / top_norm))
                yb = y + 50 + k * 10
                d.rectangle((SUMMARY_X, yb, SUMMARY_X + max(length, 1), yb + 7), fill=COLORS[side])
        y += h + 6
    return img


def render_table(title: str, headers: list[str], rows: list[list[str]], best: int | None = None,
                 note: str = "") -> Image.Image:
    """A small table; row `best` highlighted."""
    f_title, f_text = font(24), font(20)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max([probe.textlength(str(c), font=f_text) for c in col] + [60]) + 28
              for col in zip(headers, *rows)]
    width = int(max(sum(widths) + 24, probe.textlength(title, font=f_title) + 24, probe.textlength(note, font=f_text) + 24))
    row_h = 32
    height = 52 + row_h * (len(rows) + 1) + (34 if note else 10)
    check_size("the score table", width, height)
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    d.text((12, 10), title, fill=FG, font=f_title)
    y = 52
    for r, cells in enumerate([headers] + rows):
        if r - 1 == best:
            d.rectangle((6, y - 2, width - 6, y + row_h - 4), fill=(70, 60, 20))
        x = 12
        for c, cell in enumerate(cells):
            d.text((x, y), str(cell), fill=DIM if r == 0 else FG, font=f_text)
            x += widths[c]
        y += row_h
    if note:
        d.text((12, y + 4), note, fill=DIM, font=f_text)
    return img
