"""Diagnostic, not a gate: does the base draw an unnamed texture's colours from scratch? (world v4, session 9)

    UNZIPLORA_SEPARATION_WORLD=4 .venv/bin/python -m bench.separation.colour_drift OUT_PREFIX

Writes two grids. OUT_PREFIX_redrawn.png: renders of the four unnamed textures, then the base's redraws of them from
partial noise (denoise 0.5 / 0.7 / 0.85, the render's prompt): what each palette looks like when the base keeps it.
OUT_PREFIX_prior.png: 24 samples of "a shape in pattern style" from zero-mean start noise (the study's sampler,
top two rows) and from the same noise left as drawn (bottom two rows). If colours are drawn by the prompt, both
halves show the four palettes; if the start noise's mean sets them, the top half regresses to one average colour
and the bottom half follows the noise.
"""

from __future__ import annotations

import argparse
from dataclasses import replace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_prefix")
    args = ap.parse_args(argv)
    import torch

    from .env import cache_dir, setup

    setup()
    from . import base, experiment, gates, world
    from . import unnamed as W
    from .look import grid, to_uint8
    from .presets_unnamed import PRESETS

    cfg = PRESETS["full"]["base"]
    patcher = base.load_cached(cfg, cache_dir())
    clip = experiment.WorldClip(W.encoder(cfg.tokens), cfg.size)
    pairs = [(s, y) for y in W.UNNAMED_STYLES for s in W.UNNAMED_SHAPES]
    rgb, _, _ = W.batch(pairs, cfg.size, seed=11)
    texts = [W.caption(s, y) for s, y in pairs]
    pos, neg = gates.conditioning_batch(clip, texts), gates.conditioning_batch(clip, [""] * len(texts))
    scfg = experiment.SampleConfig()
    redraw = replace(scfg, per_prompt=len(pairs))
    rows = [rgb] + [experiment.sample(patcher, pos, neg, cfg.size, redraw, 5, start=world.to_latent(rgb), denoise=d)
                    for d in (0.5, 0.7, 0.85)]
    redrawn = torch.cat([torch.stack([r[i] for r in rows]) for i in range(len(pairs))])
    grid(to_uint8(redrawn), f"{args.out_prefix}_redrawn.png", per_row=8)
    prior = [W.caption(W.UNNAMED_SHAPES[0], W.UNNAMED_STYLES[0])] * 24  # "a shape in pattern style", as the prior gate
    halves = [experiment.sample(patcher, gates.conditioning_batch(clip, prior), gates.conditioning_batch(clip, [""] * 24),
                                cfg.size, replace(scfg, per_prompt=24), 600, zero_mean_noise=zm) for zm in (True, False)]
    grid(to_uint8(torch.cat(halves)), f"{args.out_prefix}_prior.png", per_row=12)
    print(f"wrote {args.out_prefix}_redrawn.png and {args.out_prefix}_prior.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
