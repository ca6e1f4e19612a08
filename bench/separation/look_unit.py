"""Look at one unit of the unnamed-world study: its probe images again, as a PNG, with what the classifiers read.

    .venv/bin/python -m bench.separation.look_unit OUT.png --arm unziplora --subject ring/rings --seed 0 [--arm naive ...]
        [--preset full-300]

Units keep only the classifiers' readings, not images. This samples the unit again from its cached LoRA files with
the unit's own seeds (nothing is written to the study's folder) and checks that the readings match the cached unit,
so the grid is the unit that was scored. Rows per arm: content alone (two new named styles), style alone (two new
named shapes), both (the training prompts), crossed (with the partner's style), four images each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from . import unnamed as W


def probe_images(study, arm: str, subject: tuple, seed: int) -> tuple[list, dict]:
    """([(kind, want, images)], the fresh record) for one unit, sampled in a scratch folder."""
    from . import classify

    real_dir = study.dir
    captured = []
    original = classify.read

    def spy(models, imgs):
        captured.append(imgs)
        return original(models, imgs)

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "runs").symlink_to(real_dir / "runs")
        study.dir = Path(tmp)
        classify.read = spy
        try:
            rec = study.unit(arm, subject, seed)
        finally:
            classify.read, study.dir = original, real_dir
    rows = [(p["kind"], p.get("new_style") or p.get("new_shape") or "", imgs) for p, imgs in zip(rec["probes"], captured)]
    return rows, rec


def main(argv=None) -> int:
    from .classify import REJECT_BELOW, read
    from .env import cache_dir
    from .handcheck import grid
    from .presets_unnamed import PRESETS
    from .study import Study, subject_name

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--arm", action="append", required=True)
    ap.add_argument("--subject", required=True, help="shape/texture, e.g. ring/rings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="full", help="the study's preset (full-300: session 8's first full run)")
    args = ap.parse_args(argv)
    subject = tuple(args.subject.split("/"))
    if subject not in W.SUBJECTS:
        ap.error(f"--subject {args.subject}: not one of {', '.join('/'.join(s) for s in W.SUBJECTS)}")
    study = Study(PRESETS[args.preset], cache_dir())
    pixels = []
    for arm in args.arm:
        cached = study.dir / "units" / f"{arm}__{subject_name(subject)}__s{args.seed}.json"
        if not cached.exists():
            print(f"{arm}: no cached unit for {args.subject} seed {args.seed} yet")
            continue
        rows, rec = probe_images(study, arm, subject, args.seed)
        same = [p["shape"] == q["shape"] and p["style"] == q["style"]
                for p, q in zip(rec["probes"], json.loads(cached.read_text())["probes"])]
        print(f"{arm}: readings {'match' if all(same) else 'DIFFER FROM'} the cached unit")
        for kind, want, imgs in rows:
            (ps, cs), (py, cy) = read(study.models, imgs)
            print(f"  {kind} {want}: " + ", ".join(
                f"{W.SHAPES[s]}/{W.STYLES[y]}" + ("" if min(a, b) >= REJECT_BELOW else " (unreadable)")
                for s, y, a, b in zip(ps.tolist(), py.tolist(), cs.tolist(), cy.tolist())))
            pixels.append((imgs.clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    if pixels:
        grid(np.concatenate(pixels), args.out, per_row=pixels[0].shape[0])
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
