"""Seconds per CPU training step against the job thread's intra-op thread count (a benchmark, never a test).

    .venv/bin/python bench/bench_cpu_threads.py [--steps 12] [--repeats 3]

Trains the tiny checkpoint's UNet (160 M, rank 4, 128 px) in a background thread, as a server job does, with
1 .. all cores, alternating so that a noisy machine hits every count alike. The job's default
(training.service.cpu_training_threads) is all cores but one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_train  # noqa: E402
from bench_apply import setup  # noqa: E402


def one(threads: int, steps: int) -> float:
    import torch

    out = {}

    def job():
        torch.set_num_threads(threads)
        out.update(bench_train.run("checkpoint", "unziplora", 4, 128, steps, "cpu", "off"))

    t = threading.Thread(target=job)
    t.start()
    t.join()
    return out["s_per_step"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    setup(cpu=True)
    import torch

    # In the server, ComfyUI's prompt thread has run OpenMP work (CLIP, VAE) before a job thread starts; its
    # thread team stays alive beside the job's. Without this the 2-core numbers look very different.
    torch.nn.functional.conv2d(torch.randn(1, 64, 64, 64), torch.randn(64, 64, 3, 3)).sum()
    cores = len(os.sched_getaffinity(0))
    counts = list(range(1, cores + 1))
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(a.repeats):
        for n in counts:
            times[n].append(one(n, a.steps))
    print(f"{cores} cores; {a.repeats} alternating runs of {a.steps} steps each")
    print(f"{'threads':>8}{'median s/step':>15}{'min':>8}{'max':>8}")
    for n in counts:
        t = times[n]
        print(f"{n:>8}{statistics.median(t):>15.3f}{min(t):>8.3f}{max(t):>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
