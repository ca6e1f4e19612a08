#!/usr/bin/env python
"""Peak host RAM of preparing the private training copy of a UNet (training/model_copy.private_unet_copy).

    python bench/copy_peak_ram.py --size sdxl     # full-size SDXL UNet, fp16 random weights (~11 GB peak:
                                                  # run under `flock /tmp/bigmem.lock`)
    python bench/copy_peak_ram.py --size medium   # the tiny checkpoint's UNet (~160 M params), for the test

Builds the live model the way a checkpoint loader leaves it (ComfyUI's SDXL model, fp16 weights, every page
written), then measures the copy in this process: VmHWM is reset just before the copy (/proc/self/clear_refs),
so `peak_rss` is the high-water mark of the copy alone on top of `rss_before_copy`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))

from bench_apply import full_sdxl_config, setup  # noqa: E402

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the RSS high-water mark (VmHWM) of this process
        return True
    except OSError:
        return False


def build_live(unet_config: dict, random: bool):
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config = comfy.supported_models.SDXL(dict(unet_config))
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, p in enumerate(model.diffusion_model.parameters()):
            # every page written, as a loaded checkpoint's are; the values do not matter to the RAM
            if random:
                p.normal_(0.0, 0.02, generator=g)
            else:
                p.fill_(0.01 * (i % 7))
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("sdxl", "medium"), default="medium")
    ap.add_argument("--fill", choices=("random", "constant"), default=None,
                    help="weight values: random (default for sdxl) or constant per tensor (faster; medium)")
    args = ap.parse_args(argv)

    setup(cpu=True)
    import torch
    from tiny_sdxl import UNET_CONFIG as MEDIUM

    from unziplora_pack.training.model_copy import private_unet_copy

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    t0 = time.time()
    live = build_live(full_sdxl_config() if args.size == "sdxl" else MEDIUM,
                      random=(args.fill or ("random" if args.size == "sdxl" else "constant")) == "random")
    weight_bytes = sum(t.numel() * t.element_size() for t in live.model.diffusion_model.state_dict().values())
    built_s = time.time() - t0
    gc.collect()
    before = _status_kb("VmRSS") * 1024
    reset = _reset_peak()
    t1 = time.time()
    unet, fp = private_unet_copy(live)
    copy_s = time.time() - t1
    peak = (_status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    copy_bytes = sum(t.numel() * t.element_size() for t in unet.state_dict().values())
    print(json.dumps({
        "size": args.size, "params": sum(p.numel() for p in unet.parameters()), "weight_bytes": weight_bytes,
        "copy_bytes": copy_bytes, "rss_before_copy": before, "peak_rss": peak,
        "ru_maxrss_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_reset": reset, "build_live_s": round(built_s, 1), "copy_s": round(copy_s, 1), "fingerprint": fp,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
