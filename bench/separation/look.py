"""Look at what the base model draws: one row per caption, two real renders then its samples, as a PNG.

    .venv/bin/python -m bench.separation.look OUT.png [--held-out] [--plain-noise] [--base FILE.safetensors]
    .venv/bin/python -m bench.separation.look OUT.png --world unnamed [--base FILE.safetensors]   # hand check

Read the composition numbers next to it: this is how the random flat backgrounds of plain-noise sampling were
found (bench/RESULTS.md). --plain-noise samples without experiment.sample's zero-mean start noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from . import world


def grid(pixels: np.ndarray, out: Path, per_row: int, zoom: int = 8) -> None:
    """uint8 images [N, H, W, 3] as a PNG: rows of per_row, each image zoomed, a 2-px white gutter around each so
    it can be read (and labelled) on its own."""
    from PIL import Image

    n, h, w, _ = pixels.shape
    gut = 2
    rows = (n + per_row - 1) // per_row
    canvas = np.full((rows * (h * zoom + gut), per_row * (w * zoom + gut), 3), 255, np.uint8)
    for i, img in enumerate(pixels):
        r, c = divmod(i, per_row)
        y, x = r * (h * zoom + gut), c * (w * zoom + gut)
        canvas[y:y + h * zoom, x:x + w * zoom] = img.repeat(zoom, 0).repeat(zoom, 1)
    Image.fromarray(canvas).save(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--held-out", action="store_true", help="the held-out pairs instead of six training pairs")
    ap.add_argument("--plain-noise", action="store_true")
    ap.add_argument("--base", type=Path, default=None, help="a base checkpoint (default: the full preset's)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--world", choices=("named", "unnamed"), default="named",
                    help="unnamed: rows of 'a shape in pattern style' then the never-captioned named pairs, each "
                         "after two real renders of what the classifiers read in the first sample (hand check)")
    args = ap.parse_args(argv)
    if args.world == "unnamed":
        return look_unnamed(args)

    from safetensors.torch import load_file

    from . import base, classify, experiment
    from .__main__ import PRESETS
    from .env import cache_dir, setup

    setup()
    cfg = PRESETS["full"]["base"]
    path = args.base or cache_dir() / f"{cfg.key()}.safetensors"
    patcher = base.build_model(cfg, load_file(str(path)))
    models, _ = classify.load_or_train(cfg.size, PRESETS["full"]["classifier_steps"], cache_dir())
    clip = experiment.WorldClip(world.WordEncoder(tokens=cfg.tokens), cfg.size)
    scfg = experiment.SampleConfig(per_prompt=args.images)
    pairs = world.HELD_OUT if args.held_out else world.TRAIN_PAIRS[:: len(world.TRAIN_PAIRS) // 6][:6]
    negative = experiment.plain_conditioning(clip, "")
    rows = []
    for k, (shape, style) in enumerate(pairs):
        positive = experiment.plain_conditioning(clip, world.prompt(shape, style))
        imgs = experiment.sample(patcher, positive, negative, cfg.size, scfg, 7 + k,
                                 zero_mean_noise=not args.plain_noise)
        shapes, styles = classify.predict(models, imgs)
        print(f"{shape}/{style}: read as " + ", ".join(
            f"{world.SHAPES[s]}/{world.STYLES[y]}" for s, y in zip(shapes.tolist(), styles.tolist())))
        real = world.batch([(shape, style)] * 2, cfg.size, seed=k)[0]
        rows.append(to_uint8(torch.cat([real, imgs.float()], 0)))
    grid(np.concatenate(rows), args.out, per_row=rows[0].shape[0])
    print(f"wrote {args.out}")
    return 0


def look_unnamed(args) -> int:
    from safetensors.torch import load_file

    from . import base, classify, gates, unnamed
    from .env import cache_dir, setup
    from .experiment import SampleConfig, WorldClip
    from .presets_unnamed import PRESETS

    setup()
    p = PRESETS["full"]
    cfg = p["base"]
    path = args.base or cache_dir() / f"{cfg.key()}.safetensors"
    patcher = base.build_model(cfg, load_file(str(path)))
    models, _ = classify.load_or_train(cfg.size, p["classifier_steps"], cache_dir(), w=unnamed)
    enc = unnamed.encoder(cfg.tokens)
    clip = WorldClip(enc, cfg.size)
    texts = [unnamed.caption(unnamed.UNNAMED_SHAPES[0], unnamed.UNNAMED_STYLES[0])] * 2 + [unnamed.caption(s, y) for s, y in unnamed.HELD_OUT]
    rows = []
    for k, text in enumerate(texts):
        imgs = gates.sample_texts(patcher, clip, [text] * args.images, SampleConfig(), cfg.size, 40 + k)
        (ps, cs), (py, cy) = classify.read(models, imgs)
        print(f"row {k} {text!r}: read as " + ", ".join(
            f"{unnamed.SHAPES[s]}/{unnamed.STYLES[y]}" + ("" if min(a, b) >= classify.REJECT_BELOW else " (unreadable)")
            for s, y, a, b in zip(ps.tolist(), py.tolist(), cs.tolist(), cy.tolist())))
        rows.append(to_uint8(imgs))
    grid(np.concatenate(rows), args.out, per_row=args.images)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
