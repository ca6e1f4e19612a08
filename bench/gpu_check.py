#!/usr/bin/env python
"""The GPU check (issue 9 §5): the pack in a live ComfyUI on an NVIDIA GPU with dynamic VRAM, end to end.

    python bench/gpu_check.py --comfyui DIR [--tarball comfyui-0.33.0.tar.gz]   # GPU, full-size SDXL, < 8 min
    python bench/gpu_check.py --comfyui DIR --cpu --tiny                          # the same stages, tiny, CPU
    python bench/gpu_check.py --plan                                              # print the stages and exit

Stages, each printed as `[gpu_check] STAGE <name>: PASS|FAIL ...`:
  checkpoint  a random-weight SDXL checkpoint (full size: scripts/tiny_sdxl.py's generator with SDXL's UNet
              config; --tiny: the cached tiny checkpoint)
  server      ComfyUI (host B: 0.33.0, dynamic VRAM on by default on NVIDIA) with this pack, API only
  stock       a stock KSampler prompt, so the live model is loaded the dynamic way before training copies it
  train       UnZipLoRATrain with the paper's settings but --steps (30) at --resolution (1024), in the
              background, while a second KSampler prompt runs beside it
  files       KSampler through stock LoraLoader with the content and style files the job wrote
Then one JSON line `[gpu_check] RESULT {...}`: device, peak allocated/reserved memory of the job, s/step,
any out-of-memory error, per-stage pass/fail. --results FILE appends it to a markdown file (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

STAGES = ("checkpoint", "server", "stock", "train", "files")
OOM = re.compile(r"out of memory|OutOfMemoryError|CUDA error: out of memory|MemoryError", re.I)
FULL_SDXL_UNET = dict(model_channels=320, channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                      transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10])


def say(*a):
    print("[gpu_check]", *a, flush=True)


def settings(args) -> dict:
    """What each stage uses: full size on the GPU, tiny on the CPU."""
    if args.tiny:
        return dict(resolution=args.resolution or 128, steps=args.steps or 4, sample_size=128, sample_steps=2,
                    rank=4, image_size=160)
    return dict(resolution=args.resolution or 1024, steps=args.steps or 30, sample_size=1024, sample_steps=8,
                rank=64, image_size=1024)


def plan(args) -> list[str]:
    s = settings(args)
    return [
        f"checkpoint: {'tiny (cached)' if args.tiny else 'full-size SDXL, random fp16 weights'}",
        f"server: ComfyUI at {args.comfyui} ({'--cpu' if args.cpu else 'GPU, dynamic VRAM default'})",
        f"stock: KSampler {s['sample_size']} px, {s['sample_steps']} steps",
        f"train: UnZipLoRATrain paper settings, {s['steps']} steps at {s['resolution']} px, rank {s['rank']}, "
        "with a KSampler prompt beside it",
        "files: KSampler through LoraLoader(content) + LoraLoader(style)",
    ]


# ------------------------------------------------------------------------------------------------ stages
def make_checkpoint(args, work: Path) -> Path:
    import tiny_sdxl

    if args.tiny:
        return tiny_sdxl.ensure_tiny_checkpoint()
    path = work / "sdxl_random.safetensors"
    if path.exists():
        return path
    tiny_sdxl._import_comfy()
    from safetensors.torch import save_file

    # the tiny generator's machinery at SDXL's size: the stock loader detects it as SDXL base
    tiny_sdxl.UNET_CONFIG = dict(tiny_sdxl.UNET_CONFIG, **FULL_SDXL_UNET)
    sd = tiny_sdxl.build_state_dict()
    save_file(sd, str(path), metadata={"unziplora.note": "random weights, gpu_check"})
    del sd
    return path


def start(args, work: Path, ckpt: Path):
    from comfy_server import make_base_dir, start_server

    base = make_base_dir(work / "base", checkpoint=ckpt)
    import sample_image

    sample_image.make_sketch(settings(args)["image_size"], settings(args)["image_size"]).save(
        base / "input" / "gpu_check.png")
    front = work / "frontend"  # API only: no frontend package needed
    front.mkdir(exist_ok=True)
    (front / "index.html").write_text("<html>gpu_check</html>")
    extra = ["--front-end-root", str(front), *args.server_arg]
    return start_server(base, cpu=args.cpu, extra_args=extra, timeout=300)


def sample_graph(ckpt: str, size: int, steps: int, seed: int, loras=(), prefix="gpu_check") -> dict:
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a sks cat in sketch style", "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "seed": seed, "steps": steps,
                                                   "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                                                   "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    model, clip = ["1", 0], ["1", 1]
    for i, lora in enumerate(loras):
        node = str(20 + i)
        g[node] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                          "strength_model": 1.0, "strength_clip": 1.0}}
        model, clip = [node, 0], [node, 1]
    g["7"]["inputs"]["model"] = model
    g["4"]["inputs"]["clip"] = clip
    g["5"]["inputs"]["clip"] = clip
    return g


def _defaults(object_info: dict, node: str) -> dict:
    """Every required/optional input of `node` at its default (new inputs of the node need no change here)."""
    spec = object_info[node]["input"]
    out = {}
    for group in ("required", "optional"):
        for name, value in (spec.get(group) or {}).items():
            opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if "default" in opts:
                out[name] = opts["default"]
            elif isinstance(value[0], list) and value[0]:
                out[name] = value[0][0]
    return out


def train_graph(object_info: dict, ckpt: str, s: dict) -> dict:
    inputs = _defaults(object_info, "UnZipLoRATrain")
    inputs.update(model=["1", 0], clip=["1", 1], vae=["1", 2], image=["2", 0], content_prompt="A sks cat",
                  style_prompt="A cat in sketch style", combined_prompt="", name="gpu_check", mode="unziplora",
                  steps=s["steps"], rank=s["rank"], resolution=s["resolution"], checkpoint_every=0,
                  preview_every=0, run_mode="background", seed=0)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "gpu_check.png"}},
        "3": {"class_type": "UnZipLoRATrain", "inputs": inputs},
    }


def wait_prompt(client, prompt_id: str, timeout: float) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        h = client.history(prompt_id)
        if h.get("status", {}).get("completed") or h.get("status", {}).get("status_str") in ("success", "error"):
            return h
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")


def prompt_ok(h: dict) -> tuple[bool, str]:
    st = h.get("status", {})
    if st.get("status_str") == "success":
        return True, ""
    msgs = [m[1] for m in st.get("messages", []) if m and m[0] == "execution_error"]
    return False, "; ".join(f"{m.get('exception_type')}: {m.get('exception_message')}" for m in msgs)[:600]


def wait_job(client, job_id: str, timeout: float, min_step: int | None = None) -> dict:
    end = time.time() + timeout
    job = {}
    while time.time() < end:
        job = client.get_json(f"/unziplora/jobs/{job_id}")
        if job["state"] in ("done", "failed", "cancelled", "interrupted") or (
                min_step is not None and job["step"] >= min_step):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job.get('state')} at step {job.get('step')} after {timeout:.0f} s")


# ------------------------------------------------------------------------------------------------ driver
def run(args) -> dict:
    s = settings(args)
    result = {"stages": {}, "settings": s, "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                          time.gmtime())}
    t_start = time.time()

    def stage(name, ok, detail="", **extra):
        result["stages"][name] = {"pass": bool(ok), "detail": detail, "t": round(time.time() - t_start, 1), **extra}
        say(f"STAGE {name}: {'PASS' if ok else 'FAIL'} ({time.time() - t_start:.0f} s) {detail}")
        return ok

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    try:
        ckpt = make_checkpoint(args, work)
    except Exception as e:  # noqa: BLE001 -- every stage reports, none raises
        stage("checkpoint", False, f"{type(e).__name__}: {e}")
        return result
    stage("checkpoint", True, f"{ckpt.name} {ckpt.stat().st_size / 2**30:.2f} GiB in {time.time() - t:.0f} s")

    try:
        server = start(args, work, ckpt)
    except Exception as e:  # noqa: BLE001
        stage("server", False, f"{type(e).__name__}: {str(e)[-1500:]}")
        return result
    try:
        log = server.log()
        dynamic = "DynamicVRAM support detected and enabled" in log
        stats = server.client().get_json("/system_stats")
        dev = (stats.get("devices") or [{}])[0]
        result.update(device=dev.get("name"), vram_total=dev.get("vram_total"), dynamic_vram=dynamic,
                      comfyui=stats.get("system", {}).get("comfyui_version"))
        stage("server", True, f"ComfyUI {result['comfyui']} on {dev.get('name')}, dynamic VRAM "
                              f"{'on' if dynamic else 'off'}, up in {server.start_s:.0f} s")
        try:
            _run_stages(args, s, server, ckpt.name, stage, result)
        except Exception as e:  # noqa: BLE001 -- a timeout or a refused prompt fails its stage, not the report
            current = next(n for n in STAGES if n not in result["stages"])
            stage(current, False, f"{type(e).__name__}: {str(e)[:1500]}")
    finally:
        log = server.log()
        server.stop()
        (work / "comfyui.log").write_text(log)
        result["oom_lines"] = [line[:300] for line in log.splitlines() if OOM.search(line)][:10]
        result["log"] = str(work / "comfyui.log")
    result["pass"] = all(v["pass"] for v in result["stages"].values()) and len(result["stages"]) == len(STAGES)
    result["total_s"] = round(time.time() - t_start, 1)
    return result


def _run_stages(args, s, server, ckpt, stage, result):
    client = server.client()
    t = time.time()
    h = wait_prompt(client, client.queue(sample_graph(ckpt, s["sample_size"], s["sample_steps"], 1)), args.timeout)
    ok, err = prompt_ok(h)
    if not stage("stock", ok, err or f"{time.time() - t:.0f} s"):
        return

    info = client.object_info("UnZipLoRATrain")
    t = time.time()
    h = wait_prompt(client, client.queue(train_graph(info, ckpt, s)), args.timeout)
    ok, err = prompt_ok(h)
    if not ok:
        stage("train", False, f"train prompt failed: {err}")
        return
    job_id = h["outputs"]["3"]["unziplora_job"][0]
    job = wait_job(client, job_id, args.timeout, min_step=1)
    beside = client.queue(sample_graph(ckpt, s["sample_size"], s["sample_steps"], 2, prefix="beside"))
    hb = wait_prompt(client, beside, args.timeout)
    beside_ok, beside_err = prompt_ok(hb)
    beside_step = client.get_json(f"/unziplora/jobs/{job_id}")["step"]
    job = wait_job(client, job_id, args.timeout)
    i = job.get("info", {})
    s_per_step = round(1.0 / job["it_per_s"], 3) if job.get("it_per_s") else None
    result.update(job_state=job["state"], job_error=job.get("error"), s_per_step=s_per_step,
                  job_peak_allocated_gib=_gib(i.get("gpu_peak_allocated")),
                  job_peak_reserved_gib=_gib(i.get("gpu_peak_reserved")), job_estimate_gib=_gib(i.get("gpu_estimate")),
                  job_warning=i.get("gpu_warning"), beside_prompt_ok=beside_ok, beside_prompt_error=beside_err,
                  beside_ended_at_step=beside_step, train_wall_s=round(time.time() - t, 1))
    ok = job["state"] == "done" and beside_ok
    stage("train", ok, f"job {job['state']} {job.get('error') or ''} s/step {s_per_step}, peak alloc "
                       f"{result['job_peak_allocated_gib']} GiB, reserved {result['job_peak_reserved_gib']} GiB; "
                       f"prompt beside: {'ok' if beside_ok else beside_err} (done at job step {beside_step})")
    if job["state"] != "done":
        return
    loras = [f"unziplora/{Path(job['outputs'][k]).name}" for k in ("content", "style")]
    h = wait_prompt(client, client.queue(sample_graph(ckpt, s["sample_size"], s["sample_steps"], 3, loras,
                                                      prefix="with_files")), args.timeout)
    ok, err = prompt_ok(h)
    stage("files", ok, err or f"sampled with {', '.join(loras)}")


def _gib(n):
    return None if n is None else round(n / 2**30, 2)


def write_results(path: Path, result: dict) -> None:
    lines = [f"\n## gpu_check {result['date']} on {result.get('device') or 'unknown device'}\n",
             f"- ComfyUI {result.get('comfyui')}, dynamic VRAM {result.get('dynamic_vram')}, "
             f"settings {json.dumps(result['settings'])}",
             *[f"- {k}: {'PASS' if v['pass'] else 'FAIL'} {v['detail']}" for k, v in result["stages"].items()],
             f"- job peak allocated {result.get('job_peak_allocated_gib')} GiB, reserved "
             f"{result.get('job_peak_reserved_gib')} GiB, s/step {result.get('s_per_step')}",
             f"- OOM: {result.get('oom_lines') or 'none'}", ""]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", type=Path, default=None, help="ComfyUI directory (default: $COMFYUI_DIR)")
    ap.add_argument("--tarball", type=Path, default=None, help="unpack this ComfyUI tarball into --comfyui's "
                    "parent first when --comfyui does not exist (it unpacks to ComfyUI/)")
    ap.add_argument("--cpu", action="store_true", help="run ComfyUI with --cpu")
    ap.add_argument("--tiny", action="store_true", help="the cached tiny checkpoint and small settings")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds any one prompt or job may take")
    ap.add_argument("--work", type=Path, default=None, help="working folder (checkpoint, base dir, log)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra ComfyUI argument (repeatable)")
    ap.add_argument("--results", type=Path, default=None, help="append the result to this markdown file")
    ap.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    ap.add_argument("--plan", action="store_true", help="print the stages and exit")
    args = ap.parse_args(argv)
    if args.comfyui is None:
        args.comfyui = Path(os.environ.get("COMFYUI_DIR") or (REPO / ".comfyui-path").read_text().strip())
    if args.plan:
        for line in plan(args):
            print(line)
        return 0
    if not (args.comfyui / "main.py").is_file():
        if not args.tarball:
            raise SystemExit(f"no ComfyUI at {args.comfyui}: give --tarball or set COMFYUI_DIR")
        with tarfile.open(args.tarball) as tar:
            tar.extractall(args.comfyui.parent, filter="data")
    os.environ["COMFYUI_DIR"] = str(args.comfyui.resolve())
    for line in plan(args):
        say("plan:", line)
    result = run(args)
    say("RESULT", json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.results:
        write_results(args.results, result)
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
