#!/usr/bin/env python
"""Sampling cost of UnZipLoRA Apply (both) against a plain model and an ordinary LoRA of the same rank.

    .venv/bin/python bench/bench_apply.py                      # tiny SDXL-shaped UNet, CPU
    .venv/bin/python bench/bench_apply.py --full-sdxl          # full-size SDXL UNet, random weights, CUDA

Rounds run every configuration once, interleaved (a warm-up round first); each run times its steps after the first
from the sampler's callback, so loading and patching are left out. The table shows the median over rounds of each
run's median seconds per step (cfg > 1: cond and uncond run as one batch of 2), and the median over rounds of
each round's ratio to "lora". Rows:
    plain            the model alone
    lora             an ordinary LoRA on the same 560 (tiny: 88) attention linears, ComfyUI's LoRA patching
    both             UnZipLoRA Apply (both): static patches + the three-stream attn2 K/V patch, streams from Prompts
    both, no cache   the same with the K/V deltas recomputed at every step (what the cache saves)
Target: both / lora <= 1.05.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = "unziplora_pack"


def setup(cpu: bool):
    """ComfyUI on sys.path and the pack imported as a package (scripts/dev_env.py, as the tests do)."""
    sys.path[:0] = [str(REPO / "tests")]
    sys.path.append(str(REPO / "scripts"))
    import dev_env

    dev_env.setup(cpu=cpu)


def full_sdxl_config() -> dict:
    from comfy_server import _tiny_sdxl_module

    return dict(_tiny_sdxl_module().FULL_UNET_CONFIG, image_size=128)


def build_model(full: bool):
    import torch

    from tiny_models import build_tiny_sdxl, init_weights_

    if not full:
        return build_tiny_sdxl(seed=0)
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(full_sdxl_config())
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({})
    init_weights_(model.diffusion_model, seed=0)
    model.diffusion_model.to(torch.float16)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cuda"), offload_device=torch.device("cpu"))


def conditioning(seed: int):
    from tiny_models import random_conditioning

    ctx, pooled = random_conditioning(seed)
    return [[ctx, {"pooled_output": pooled, "width": 1024, "height": 1024}]]


def ordinary_lora(model, rank: int):
    """A kohya LoRA of `rank` on every attention linear, loaded the way LoraLoader loads it."""
    import comfy.sd
    import torch

    from unziplora_pack.unziplora.lora_files import lora_to_kohya
    from unziplora_pack.unziplora.lora_formats import shapes_from_model

    g = torch.Generator().manual_seed(1)
    factors = {p: (torch.randn(rank, i, generator=g) * 0.01, torch.randn(o, rank, generator=g) * 0.01)
               for p, (i, o) in shapes_from_model(model).items()}
    return comfy.sd.load_lora_for_models(model, None, lora_to_kohya(factors), 1.0, 0)[0]


def unziplora_pair(model, rank: int, folder: str):
    """A trained-looking run (random factors, masks, mergers) saved and loaded like a real one, applied in both."""
    import torch

    from pair_helpers import random_lora, save_lora
    from unziplora_pack.unziplora import pair as pairs
    from unziplora_pack.unziplora.apply import apply_pair

    lora = random_lora(model, seed=2, rank=rank)
    saved = save_lora(lora, folder, "bench", dtype=torch.float16)
    return apply_pair(model, pairs.from_bundle(saved.bundle), mode="both")


def step_times(model, positive, negative, steps: int, size: int, device, clock=time.perf_counter) -> list[float]:
    """Seconds of each sampling step after the first, from the sampler's per-step callback: model loading, weight
    patching and the first step (where the K/V deltas are computed once) are left out."""
    import comfy.sample
    import torch

    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    stamps = []

    def callback(step, x0, x, total):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(clock())

    comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", positive, negative, latent, callback=callback,
                        disable_pbar=True, seed=0)
    return [b - a for a, b in zip(stamps, stamps[1:])]


class _NoDeltaCache:
    """Drops the K/V delta cache for the 'no cache' row."""

    def __enter__(self):
        from unziplora_pack.unziplora import kv_patch

        self.kv, self.real = kv_patch, kv_patch.StreamsWrapper.streams

        def uncached(wrapper, *args, **kwargs):
            streams = dict(self.real(wrapper, *args, **kwargs))
            streams["cache"] = None
            return streams

        kv_patch.StreamsWrapper.streams = uncached
        return self

    def __exit__(self, *exc):
        self.kv.StreamsWrapper.streams = self.real


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-sdxl", action="store_true", help="full-size SDXL UNet (random weights) on CUDA")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default: 8 tiny, 64 full)")
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default: 256 tiny, 1024 full)")
    parser.add_argument("--steps", type=int, default=6, help="sampling steps per run")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on the CPU)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="cpu: this process's CPU time (default on the CPU: other processes' load does not count; "
                             "with 1 thread it is the work done); wall: elapsed time (default on CUDA)")
    args = parser.parse_args(argv)

    import torch

    if args.full_sdxl and not torch.cuda.is_available():
        print("--full-sdxl needs a CUDA GPU (a 1024 px forward of the full UNet takes about a minute on a CPU); "
              "run it on a machine with one.")
        return 2
    threads = args.threads or (None if args.full_sdxl else 1)
    if threads:
        torch.set_num_threads(threads)
    clock_name = args.clock or ("wall" if args.full_sdxl else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    setup(cpu=not args.full_sdxl)
    import comfy.model_management as mm

    from unziplora_pack.unziplora import kv_patch
    from tiny_models import random_conditioning

    rank = args.rank or (64 if args.full_sdxl else 8)
    size = args.size or (1024 if args.full_sdxl else 256)
    device = torch.device("cuda" if args.full_sdxl else "cpu")
    model = build_model(args.full_sdxl)
    plain_pos, plain_neg = conditioning(1), conditioning(2)
    pos = kv_patch.with_streams(plain_pos, random_conditioning(3)[0], random_conditioning(4)[0])
    neg = kv_patch.with_zero_streams(plain_neg)
    with tempfile.TemporaryDirectory() as tmp:
        both = unziplora_pair(model, rank, tmp)
        configs = [("plain", model, plain_pos, plain_neg, None),
                   ("lora", ordinary_lora(model, rank), plain_pos, plain_neg, None),
                   ("both", both, pos, neg, None), ("both, no cache", both, pos, neg, _NoDeltaCache)]
        times = {name: [] for name, *_ in configs}
        # rounds interleave the configurations, so load from other processes hits them all alike
        for round_ in range(args.runs + 1):
            for name, m, p, n, ctx in configs:
                mm.unload_all_models()
                with ctx() if ctx else contextlib.nullcontext():
                    t = step_times(m, p, n, args.steps, size, device, clock)
                if round_:  # round 0 warms up
                    times[name].append(statistics.median(t))
    # ratios within a round compare runs taken seconds apart: slow drifts of the machine's load cancel out
    rows = [(name, statistics.median(ts), statistics.median(t / b for t, b in zip(ts, times["lora"])))
            for name, ts in times.items()]
    mm.unload_all_models()
    what = "full SDXL UNet, fp16, CUDA" if args.full_sdxl else f"tiny SDXL UNet, fp32, CPU ({torch.get_num_threads()} threads)"
    what += f", {clock_name} time"
    print(f"\n{what}; {size} px, rank {rank}, {args.steps} steps, cfg 5, median of {args.runs} rounds\n")
    print(f"| {'configuration':<16} | {'s / step':>9} | {'vs lora':>7} |")
    print(f"|{'-' * 18}|{'-' * 11}|{'-' * 9}|")
    for name, t, ratio in rows:
        print(f"| {name:<16} | {t:9.4f} | {ratio:7.3f} |")
    ratio = dict((name, r) for name, _, r in rows)["both"]
    print(f"\nboth / lora = {ratio:.3f} (median of per-round ratios; target <= 1.05): {'OK' if ratio <= 1.05 else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
