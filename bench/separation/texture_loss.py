"""Diagnostic, not a gate: the base model's denoising loss per texture, on fresh renders captioned as in its
training ("a ring in pattern style" -> "a shape in pattern style"), in three noise bands.

    .venv/bin/python -m bench.separation.texture_loss [--images 96] [--preset full-base8k]

A texture the base fits worse at low noise is one it cannot draw: its samples keep speckle where the detail should
be, and "a shape in pattern style" drifts to the textures it fits best (the prior gate).
"""

from __future__ import annotations

import argparse

import torch

from . import unnamed as W

BANDS = ((0, 200, "low noise (t < 200)"), (200, 600, "mid (200-600)"), (600, 1000, "high (600-1000)"))


@torch.no_grad()
def texture_losses(patcher, encoder, size: int, images: int, seed: int = 0) -> dict:
    from unziplora_pack.training.loop import ddpm_alphas_cumprod

    from . import world
    from .base import denoise_loss

    alphas = ddpm_alphas_cumprod().float()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for style in W.STYLES:
        shapes = W.UNNAMED_SHAPES if style in W.UNNAMED_STYLES else W.NAMED_SHAPES[1:]  # named: skip the held-out circle
        pairs = [(shapes[i % len(shapes)], style) for i in range(images)]
        pairs = [p for p in pairs if p not in W.HELD_OUT]
        rgb, _, _ = W.batch(pairs, size, seed=seed + 1)
        x0 = world.to_latent(rgb)
        enc = [encoder.encode(W.caption(s, y)) for s, y in pairs]
        ctx, pooled = torch.cat([e[0] for e in enc]), torch.cat([e[1] for e in enc])
        row = {}
        for lo, hi, name in BANDS:
            t = torch.randint(lo, hi, (len(pairs),), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            row[name] = float(denoise_loss(patcher, alphas, x0, t, noise, ctx, pooled, size))
        out[style] = row
    return out


def main(argv=None) -> int:
    from . import base
    from .env import cache_dir, setup
    from .presets_unnamed import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full", help="whose base (e.g. full-base8k)")
    args = ap.parse_args(argv)
    setup()
    cfg = PRESETS[args.preset]["base"]
    patcher = base.load_cached(cfg, cache_dir())
    losses = texture_losses(patcher, W.encoder(cfg.tokens), cfg.size, args.images)
    print("| texture | caption word | " + " | ".join(name for _, _, name in BANDS) + " |")
    print("|---|---|" + "---|" * len(BANDS))
    for style, row in losses.items():
        word = style if style in W.NAMED_STYLES else W.STYLE_WORD
        print(f"| {style} | {word} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
