"""Why the unnamed prior is not flat: the prior gate's measurement repeated at other guidance scales (a diagnostic,
not a gate: the study's gates keep their pre-registered sampling, cfg 4).

    .venv/bin/python -m bench.separation.prior_cfg --cfg 1 2 4 7

If one texture's share falls towards 0.25 as cfg falls, the base's prior is flat and classifier-free guidance picks
the mode (the smoothest texture); if it stays, the base itself learned a skewed "pattern style".
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path


def main(argv=None) -> list[dict]:
    import torch

    ap = argparse.ArgumentParser(prog="python -m bench.separation.prior_cfg", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.0])
    ap.add_argument("--images", type=int, default=None, help="per prompt (default: the prior gate's count)")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from . import gates as G
    from .env import cache_dir
    from .presets_unnamed import PRESETS
    from .study import Study

    preset = PRESETS["full"]
    study = Study(preset, Path(args.cache) if args.cache else cache_dir(), log=lambda m: None)
    images = args.images or preset["gate_images"] * 4
    rows = []
    base_scfg = study.scfg
    print("| cfg | unnamed shape and texture | largest shape | largest texture (which) | largest subject | "
          "unreadable | s |")
    print("|---|---|---|---|---|---|---|")
    for cfg in args.cfg:
        t0 = time.time()
        study.scfg = replace(base_scfg, cfg=cfg)
        plain = G.prior_gate(study, images)["a shape in pattern style"]
        top = max(plain["styles"], key=lambda k: plain["styles"][k] if k in G.W.UNNAMED_STYLES else -1)
        rows.append({"cfg": cfg, **plain})
        print(f"| {cfg:g} | {plain['unnamed_both']:.2f} | {plain['max_shape']:.2f} | {plain['max_style']:.2f} ({top}) "
              f"| {plain['max_subject']:.2f} | {plain['unreadable']:.2f} | {time.time() - t0:.0f} |", flush=True)
    study.scfg = base_scfg
    return rows


if __name__ == "__main__":
    main()
