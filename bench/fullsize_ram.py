#!/usr/bin/env python
"""Where a training job's host RAM goes: the job's path in one process, RSS after each stage.

    /work/bin/heavy --big nice -n 10 .venv/bin/python bench/fullsize_ram.py --size sdxl --steps 1
    .venv/bin/python bench/fullsize_ram.py --size medium --steps 2      # the tiny checkpoint's UNet

Builds the live model the way ComfyUI `--cpu --bf16-unet` leaves a loaded checkpoint (SDXL model, bf16 weights,
every page written), then runs what a Train node and its job do: the private copy (training/model_copy.py), the
Trainer's set-up (cast, LoRA injection, optimiser) and the first steps (paper mode, rank 64, `--res` px, synthetic
prompt streams and latents: CLIP and VAE play no part in the job's growth). A sampler thread reads VmRSS every
0.2 s; each stage reports RSS after it, its own peak (VmHWM, reset before each stage), and both relative to the
UNet's weight bytes. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from bench_apply import full_sdxl_config, setup  # noqa: E402

GB = 1e9


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Sampler(threading.Thread):
    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], False

    def run(self):
        t0 = time.time()
        while not self.stop:
            self.samples.append((round(time.time() - t0, 1), status_kb("VmRSS") * 1024))
            time.sleep(self.every)


def build_live(unet_config: dict, dtype):
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config = comfy.supported_models.SDXL(dict(unet_config))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("sdxl", "medium"), default="medium")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--optimizer", default="auto")
    ap.add_argument("--mode", default="unziplora")
    args = ap.parse_args(argv)

    setup(cpu=True)
    import torch
    from tiny_models import tiny_training_parts
    from tiny_sdxl import UNET_CONFIG as MEDIUM

    from unziplora_pack.training.config import TrainConfig
    from unziplora_pack.training.loop import Trainer, TrainInputs
    from unziplora_pack.training.model_copy import private_unet_copy
    try:
        from unziplora_pack.training.prepare import copy_plan, host_estimate
    except ImportError:  # the code before issue 23's fix (for running its test both ways)
        copy_plan = host_estimate = None
    from unziplora_pack.unziplora.targets import find_targets

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    sampler = Sampler()
    sampler.start()
    rows = []

    def stage(name, fn):
        reset_peak()
        t = time.time()
        out = fn()
        rows.append({"stage": name, "rss": status_kb("VmRSS") * 1024, "peak": status_kb("VmHWM") * 1024,
                     "s": round(time.time() - t, 1)})
        print(f"{name:<26} rss {rows[-1]['rss'] / GB:6.2f} GB  peak {rows[-1]['peak'] / GB:6.2f} GB  "
              f"{rows[-1]['s']:6.1f} s", flush=True)
        return out

    rows.append({"stage": "start", "rss": status_kb("VmRSS") * 1024, "peak": status_kb("VmHWM") * 1024, "s": 0})
    live = stage("live model (bf16)", lambda: build_live(full_sdxl_config() if args.size == "sdxl" else MEDIUM,
                                                         torch.bfloat16))
    weight_bytes = sum(t.numel() * t.element_size() for t in live.model.diffusion_model.state_dict().values())
    side = args.res // 8
    parts = tiny_training_parts(live, latent_hw=(side, side), size=args.res)
    config = TrainConfig(steps=max(2, args.steps), rank=args.rank, resolution=args.res, precision=args.precision,
                         optimizer=args.optimizer, mode=args.mode, preview_every=0, checkpoint_every=0,
                         sample_times=min(3, max(2, args.steps)))
    # what prepare_inputs does: the copy made where and in the dtype the job trains in, after the host check
    if copy_plan is not None:
        copy_device, copy_dtype = copy_plan(live, config, torch.device("cpu"))
        est = host_estimate(live, config, copy_device, copy_dtype, find_targets(live))
        print(f"host estimate: {est.total / GB:.2f} GB ({est.describe()})", flush=True)
        unet, fp = stage("private copy", lambda: private_unet_copy(live, dtype=copy_dtype, device=copy_device))
    else:
        est = None
        unet, fp = stage("private copy", lambda: private_unet_copy(live))
    inputs = TrainInputs(unet=unet, base_fingerprint=fp, **parts)
    trainer = Trainer(inputs, config, device="cpu")
    state = stage("trainer set-up", trainer._setup)
    unet_t, lora, optimizer = state.unet, state.lora, state.optimizer
    for i in range(args.steps):
        stage(f"step {i + 1}", lambda: trainer.step(state))
    sampler.stop = True
    base = rows[1]["rss"]
    lora_bytes = sum(p.numel() * p.element_size() for p in lora.parameters())
    opt_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t))
    unet_bytes = sum(t.numel() * t.element_size() for t in unet_t.state_dict().values())
    peak = max(r["peak"] for r in rows)
    print(f"UNet weights (live) {weight_bytes / GB:.2f} GB; copy as trained {unet_bytes / GB:.2f} GB "
          f"({trainer.dtype}); LoRA {lora_bytes / GB:.2f} GB; optimiser state {opt_bytes / GB:.2f} GB "
          f"({trainer.optimizer_name})")
    print(f"job's growth over the live model: peak {(peak - base) / GB:.2f} GB = "
          f"{(peak - base) / weight_bytes:.2f} x the UNet's weights")
    print(json.dumps({"size": args.size, "res": args.res, "rank": args.rank, "precision": args.precision,
                      "compute_dtype": str(trainer.dtype), "weight_bytes": weight_bytes, "copy_bytes": unet_bytes,
                      "lora_bytes": lora_bytes, "optimizer_bytes": opt_bytes, "rows": rows,
                      "growth_peak": peak - base, "estimate": est and est.total,
                      "estimate_parts": est and [est.copy, est.lora, est.activations], "growth_ratio": round((peak - base) / weight_bytes, 3),
                      "rss_samples_gb": [(t, round(v / GB, 2)) for t, v in sampler.samples[:: 5]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
