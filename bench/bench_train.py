"""Seconds per training step of the UnZipLoRA loop, printed as a table (a benchmark, never a test).

    .venv/bin/python bench/bench_train.py                 # CPU: the in-process tiny model and the tiny checkpoint's UNet
    .venv/bin/python bench/bench_train.py --quick         # CPU: the tiny model only (about a minute)
    .venv/bin/python bench/bench_train.py --full-sdxl     # CUDA: a full-size SDXL UNet with random weights (times
                                                          # exactly like the real one), 1024 px, paper settings
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_apply import full_sdxl_config, setup  # noqa: E402
from bench_memory import _comparison_step, op_counter  # noqa: E402


def _unet_config(kind: str) -> dict:
    if kind == "full":
        return full_sdxl_config()
    if kind == "checkpoint":
        spec = importlib.util.spec_from_file_location("tiny_sdxl", REPO / "scripts" / "tiny_sdxl.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return dict(mod.UNET_CONFIG)
    from tiny_models import TINY_UNET_CONFIG

    return dict(TINY_UNET_CONFIG)


def run(kind: str, mode: str, rank: int, resolution: int, steps: int, device: str, ckpt: str,
        grouped: bool = True) -> dict:
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from tiny_models import init_weights_
    from unziplora_pack.training.config import TrainConfig
    from unziplora_pack.training.data import LatentPosteriors, PromptStreams
    from unziplora_pack.training.loop import Trainer, TrainInputs
    from unziplora_pack.training.model_copy import private_unet_copy

    config = comfy.supported_models.SDXL(_unet_config(kind))
    model = config.get_model({})
    init_weights_(model.diffusion_model, seed=0)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    unet, fp = private_unet_copy(patcher)
    g = torch.Generator().manual_seed(0)
    x, x_c, x_s = (torch.randn(1, 77, 2048, generator=g) for _ in range(3))
    pooled = torch.randn(1, 1280, generator=g)
    lat = resolution // 8
    post = LatentPosteriors(torch.randn(1, 4, lat + 4, lat + 4, generator=g), torch.full((1, 4, lat + 4, lat + 4), 0.05))
    adm = model.encode_adm(pooled_output=pooled, width=resolution, height=resolution, crop_w=0, crop_h=0,
                           target_width=resolution, target_height=resolution).detach()
    cfg = TrainConfig(mode=mode, steps=steps, rank=rank, resolution=resolution, sample_times=min(3, steps - 1),
                      checkpoint_every=0, gradient_checkpointing=ckpt)
    inputs = TrainInputs(unet=unet, streams=PromptStreams(x, x_c, x_s, pooled), posteriors=post, adm=adm,
                         base_fingerprint=fp)
    trainer = Trainer(inputs, cfg, device=device)
    trainer.group_step_factors = grouped
    stamps = []
    ops = {}
    step = trainer.step

    def counted(g, *args, **kwargs):
        # g = 1 is a column selection (schedule period >= 2), g = 2 an ordinary step
        if g not in (1, 2):
            return step(g, *args, **kwargs)
        with op_counter() as counter:
            out = step(g, *args, **kwargs)
        ops[g] = counter.kernels
        return out

    trainer.step = counted

    def progress(step, total, loss):
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.run(progress=progress)
    # the first 2 steps include warm-up (allocations, kernel selection); the selection step is included after
    per_step = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    return dict(kind=kind, unet_m=params, mode=mode, rank=rank, res=resolution, device=device, ckpt=ckpt,
                s_per_step=per_step, peak_gib=peak, precision=str(trainer.dtype).replace("torch.", ""),
                ops=ops.get(2, 0), select_ops=ops.get(1, 0),
                plain_ops=plain_floor(unet, rank, resolution) if device == "cpu" else 0)


def plain_floor(unet, rank: int, resolution: int) -> int:
    """Kernels of one step of an ordinary rank-2r LoRA on the same linears (same FLOPs as our two rank-r LoRAs),
    in fp32 like our CPU steps: the op count a dual step is measured against (CPU rows only; on a GPU see
    bench_memory.py's plain row)."""
    import torch

    unet.to(torch.float32)
    step, _, _, close = _comparison_step("plain", unet, rank, resolution, contextlib.nullcontext(), torch.float32)
    step()
    with op_counter() as counter:
        step()
    close()
    return counter.kernels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-sdxl", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="CPU: the tiny in-process model only")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    ap.add_argument("--grouped", choices=["on", "off"], default="on",
                    help="step factors per group of alike linears (the trainer's way) or linear by linear (A/B)")
    a = ap.parse_args()
    grouped = a.grouped == "on"
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)

    cuda = torch.cuda.is_available()
    if a.full_sdxl and not cuda:
        print("--full-sdxl needs a CUDA GPU (one 1024 px forward of the full UNet takes about a minute on a CPU)")
        return 2
    setup(cpu=not cuda)
    if a.full_sdxl:
        cases = [("full", "unziplora", 64, 1024, "cuda", c) for c in ("off", "on")]
    else:
        cases = [("tiny", "unziplora", 64, 128, "cpu", "off"), ("checkpoint", "unziplora", 8, 128, "cpu", "off"),
                 ("checkpoint", "unziplora", 64, 128, "cpu", "off"), ("checkpoint", "naive", 64, 128, "cpu", "off")]
        if a.quick:
            cases = cases[:1]
    rows = [run(k, m, r, res, a.steps, d, c, grouped) for k, m, r, res, d, c in cases]
    print(f"{torch.get_num_threads()} intra-op threads")
    print(f"{'model':<11}{'UNet M':>8} {'mode':<10}{'rank':>5}{'px':>6} {'device':<6}{'prec':<9}{'ckpt':<5}"
          f"{'s/step':>9}{'peak GiB':>10}{'ops':>8}{'plain 2r':>9}{'ratio':>6}{'select':>7}")
    for r in rows:
        print(f"{r['kind']:<11}{r['unet_m']:>8.0f} {r['mode']:<10}{r['rank']:>5}{r['res']:>6} {r['device']:<6}"
              f"{r['precision']:<9}{r['ckpt']:<5}{r['s_per_step']:>9.3f}{r['peak_gib']:>10.2f}{r['ops']:>8}"
              f"{r['plain_ops']:>9}{r['ops'] / max(1, r['plain_ops']):>6.2f}{r['select_ops'] / max(1, r['ops']):>7.2f}")
    print("ops: kernels of one ordinary step (g = 2); plain 2r: one rank-2r LoRA on the same linears; "
          "select: the selection step's kernels / an ordinary step's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
