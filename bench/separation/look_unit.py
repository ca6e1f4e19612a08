"""Look at one unit of the unnamed-world study: its probe images again, as a PNG, with what the classifiers read.

    .venv/bin/python -m bench.separation.look_unit OUT.png --arm unziplora --subject ring/rings --seed 0 [--arm naive ...]
        [--preset full-300]

Units keep only the classifiers' readings, not images. This samples the unit again from its cached LoRA files with
the unit's own seeds (Study.probe_images, the code the unit was made with; nothing is written) and checks that the
readings match the cached unit, so the grid is the unit that was scored. Rows per arm: content alone (two new named
styles), style alone (two new named shapes), both (the training prompts), crossed (with the partner's style).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import unnamed as W


def main(argv=None) -> int:
    from .classify import REJECT_BELOW, read
    from .env import cache_dir
    from .look import grid, to_uint8
    from .presets_unnamed import PRESETS
    from .study import Study, subject_name

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--arm", action="append", required=True)
    ap.add_argument("--subject", required=True, help="shape/texture, e.g. ring/rings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS),
                    help="the study's preset (full-300: session 8's first full run)")
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
        scored = json.loads(cached.read_text())["probes"]
        probes = study.probe_images(study.arm_models(arm, subject, args.seed), subject, args.seed)
        for (kind, want, imgs), rec in zip(probes, scored):
            (ps, cs), (py, cy) = read(study.models, imgs)
            same = ps.tolist() == rec["shape"] and py.tolist() == rec["style"]
            print(f"{arm} {kind} {''.join(want.values())}{'' if same else ' (DIFFERS FROM THE CACHED UNIT)'}: " + ", ".join(
                f"{W.SHAPES[s]}/{W.STYLES[y]}" + ("" if min(a, b) >= REJECT_BELOW else " (unreadable)")
                for s, y, a, b in zip(ps.tolist(), py.tolist(), cs.tolist(), cy.tolist())))
            pixels.append(to_uint8(imgs))
    if pixels:
        grid(np.concatenate(pixels), args.out, per_row=pixels[0].shape[0])
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
