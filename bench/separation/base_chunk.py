"""Train the unnamed world's base model in chunks: `python -m bench.separation.base_chunk [--budget-s 900]`
trains for at most budget seconds, checkpoints and exits 3 if more is left (0 when the base is done), so a shell
loop can hold the shared machine's lock one chunk at a time:

    until nice -n 10 /work/bin/heavy .venv/bin/python -m bench.separation.base_chunk; [ $? -ne 3 ]; do :; done
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-s", type=float, default=900)
    ap.add_argument("--preset", default="full")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from . import base, unnamed
    from .env import cache_dir, setup
    from .presets_unnamed import PRESETS

    from .study import locked

    setup()
    cfg = PRESETS[args.preset]["base"]
    with locked(cache_dir() / "stage.lock"):  # one trainer of the base at a time (the study takes the same lock)
        patcher, info = base.load_or_train(cfg, unnamed.encoder(cfg.tokens), cache_dir(),
                                           log=lambda m: print(m, flush=True), budget_s=args.budget_s)
    if patcher is None:
        return 3
    print(f"[base] done: {info}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
