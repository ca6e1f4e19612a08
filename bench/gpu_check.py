#!/usr/bin/env python
"""The GPU check (issue 9 §5): the pack in a live ComfyUI on an NVIDIA GPU with dynamic VRAM, end to end.

    python bench/gpu_check.py --comfyui DIR [--tarball comfyui-0.33.0.tar.gz]   # GPU, full-size SDXL, ~5 min
    python bench/gpu_check.py --comfyui DIR --cpu --tiny                          # the same stages, tiny, CPU
    python bench/gpu_check.py --plan                                              # print the stages and exit
    bash bench/gpu_check_device.sh                # on a lent GPU machine: set-up from carried wheels, then the check

Stages, each printed as `[gpu_check] STAGE <name>: PASS|FAIL|SKIP (<its seconds> s, <seconds since start> s) ...`:
  checkpoint  a random-weight SDXL checkpoint: scripts/tiny_sdxl.py --size full (SDXL's own UNet config, drawn on
              the GPU, 2,567,463,684 UNet parameters) or --tiny's cached tiny one, in a subprocess that also checks
              the written file's layout the way the stock loader reads it (tiny_sdxl.check_layout)
  server      ComfyUI (host B: 0.33.0, dynamic VRAM on by default on NVIDIA) with this pack, API only
  stock       a stock KSampler prompt, so the live model is loaded the dynamic way before training copies it
  train       UnZipLoRATrain with the paper's settings but --steps (20) at --resolution (1024), in the
              background, while a second KSampler prompt runs beside it
  headroom    under dynamic VRAM: the job raised comfy-aimdo's headroom above the value it found and put exactly
              that value back (job info gpu_headroom_base / _peak / _after); SKIP where dynamic VRAM is off
  files       KSampler through stock LoraLoader with the content and style files the job wrote
  second_gpu  only where Train offers gpu:1: a short job on gpu:1 while a prompt samples on ComfyUI's device;
              the job trains there, reserves nothing process-wide; SKIP on one GPU
Then one JSON line `[gpu_check] RESULT {...}`: device, peak allocated/reserved memory of the job, s/step,
any out-of-memory error, per-stage pass/fail and seconds. --results FILE appends it to a markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

STAGES = ("checkpoint", "server", "stock", "train", "headroom", "files", "second_gpu")
OOM = re.compile(r"out of memory|OutOfMemoryError|CUDA error: out of memory|MemoryError", re.I)
SDXL_UNET_PARAMS = 2_567_463_684


def say(*a):
    print("[gpu_check]", *a, flush=True)


def settings(args) -> dict:
    """What each stage uses: full size on the GPU, tiny on the CPU."""
    if args.tiny:
        return dict(resolution=args.resolution or 128, steps=args.steps or 4, sample_size=128, sample_steps=2,
                    rank=4, image_size=160)
    return dict(resolution=args.resolution or 1024, steps=args.steps or 20, sample_size=1024, sample_steps=8,
                rank=64, image_size=1024)


def checkpoint_size(args) -> str:
    return "tiny" if args.tiny else "full"


def plan(args) -> list[str]:
    s = settings(args)
    return [
        f"checkpoint: {'tiny (cached)' if args.tiny else 'full-size SDXL, random fp16 weights'}",
        f"server: ComfyUI at {args.comfyui} ({'--cpu' if args.cpu else 'GPU, dynamic VRAM default'})",
        f"stock: KSampler {s['sample_size']} px, {s['sample_steps']} steps",
        f"train: UnZipLoRATrain paper settings, {s['steps']} steps at {s['resolution']} px, rank {s['rank']}, "
        "with a KSampler prompt beside it",
        "headroom: comfy-aimdo's headroom raised during the job and put back exactly (dynamic VRAM only)",
        "files: KSampler through LoraLoader(content) + LoraLoader(style)",
        "second_gpu: a short job on gpu:1 beside a prompt on ComfyUI's device (two GPUs only)",
    ]


# ------------------------------------------------------------------------------------------------ stages
def checkpoint_command(args, work: Path) -> list[str]:
    """The generator, in a subprocess: its memory (and on a GPU its CUDA context) is gone before the server starts.
    Full size is drawn on the GPU (seconds, where 16 CPU cores take minutes for 3.5 G random numbers)."""
    device = "cpu" if args.cpu else "cuda"
    out = work if not args.tiny else None
    cmd = [sys.executable, str(REPO / "scripts" / "tiny_sdxl.py"), "--size", checkpoint_size(args), "--device", device,
           "--check", "--comfyui", str(args.comfyui)]
    return cmd + (["--out", str(out)] if out else [])


def parse_checkpoint_output(text: str, size: str) -> tuple[Path, dict]:
    """(path, layout) from the generator's output; AssertionError when the file is not what the stage needs."""
    layout = next((json.loads(line.split("layout:", 1)[1]) for line in text.splitlines()
                   if line.startswith("[tiny_sdxl] layout:")), None)
    assert layout is not None, f"the generator printed no layout: {text[-800:]}"
    assert layout["model"] == "SDXL", layout
    if size == "full":
        assert layout["unet"] == SDXL_UNET_PARAMS, f"UNet has {layout['unet']} parameters, SDXL {SDXL_UNET_PARAMS}"
    path = Path(text.strip().splitlines()[-1])
    return path, layout


def make_checkpoint(args, work: Path) -> tuple[Path, dict]:
    proc = subprocess.run(checkpoint_command(args, work), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"tiny_sdxl.py exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    return parse_checkpoint_output(proc.stdout, checkpoint_size(args))


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


POLL_ERRORS = (TimeoutError, ConnectionError, OSError)  # a server busy sampling may miss one poll's socket timeout


def wait_prompt(client, prompt_id: str, timeout: float) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        try:
            h = client.history(prompt_id)
        except POLL_ERRORS:
            time.sleep(1.0)
            continue
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
        try:
            job = client.get_json(f"/unziplora/jobs/{job_id}")
        except POLL_ERRORS:
            time.sleep(1.0)
            continue
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
    last = {"t": t_start}

    def stage(name, ok, detail="", skip=False, **extra):
        """Record a stage: its own seconds (since the previous stage ended) and the seconds since the start."""
        now = time.time()
        verdict = "SKIP" if skip else ("PASS" if ok else "FAIL")
        result["stages"][name] = {"pass": bool(ok) or skip, "verdict": verdict, "detail": detail,
                                  "s": round(now - last["t"], 1), "t": round(now - t_start, 1), **extra}
        say(f"STAGE {name}: {verdict} ({now - last['t']:.0f} s, {now - t_start:.0f} s) {detail}")
        last["t"] = now
        return ok

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt, layout = make_checkpoint(args, work)
    except Exception as e:  # noqa: BLE001 -- every stage reports, none raises
        stage("checkpoint", False, f"{type(e).__name__}: {e}")
        return result
    result["checkpoint"] = layout
    stage("checkpoint", True, f"{ckpt.name} {ckpt.stat().st_size / 2**30:.2f} GiB, {layout['keys']} tensors, detected "
                              f"{layout['model']}, UNet {layout['unet'] / 1e9:.3f} G parameters")

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
    result["stage_seconds"] = {k: v["s"] for k, v in result["stages"].items()}
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
    check_headroom(job, result, stage)
    if job["state"] != "done":
        return
    loras = [f"unziplora/{Path(job['outputs'][k]).name}" for k in ("content", "style")]
    h = wait_prompt(client, client.queue(sample_graph(ckpt, s["sample_size"], s["sample_steps"], 3, loras,
                                                      prefix="with_files")), args.timeout)
    ok, err = prompt_ok(h)
    stage("files", ok, err or f"sampled with {', '.join(loras)}")
    second_gpu(args, s, client, ckpt, stage)


def check_headroom(job: dict, result: dict, stage) -> bool:
    """Dynamic VRAM: the job raised comfy-aimdo's headroom and put back exactly the value it found."""
    i = job.get("info", {})
    if not result.get("dynamic_vram"):
        return stage("headroom", True, "dynamic VRAM is off on this server: only EXTRA_RESERVED_VRAM planned the job",
                     skip=True)
    base, peak, after = i.get("gpu_headroom_base"), i.get("gpu_headroom_peak"), i.get("gpu_headroom_after")
    result.update(headroom_knob=i.get("gpu_headroom"), headroom_base=base, headroom_peak=peak, headroom_after=after)
    if i.get("gpu_headroom") is None:
        return stage("headroom", False, "dynamic VRAM is on but the job found no comfy-aimdo headroom knob")
    ok = base is not None and peak is not None and peak > base and after == base
    return stage("headroom", ok, f"comfy-aimdo ({i.get('gpu_headroom')}) headroom {_gib(base)} GiB -> {_gib(peak)} "
                                 f"GiB during the job -> {_gib(after)} GiB after")


def second_gpu(args, s: dict, client, ckpt: str, stage) -> None:
    """Where Train offers gpu:1: a short job there while a prompt samples on ComfyUI's device."""
    info = client.object_info("UnZipLoRATrain")
    spec = info["UnZipLoRATrain"]["input"].get("optional", {}).get("device")
    options = spec[0] if spec and isinstance(spec[0], list) else (spec[1].get("options", []) if spec else [])
    if "gpu:1" not in options:
        stage("second_gpu", True, f"one GPU (Train's devices: {', '.join(options) or 'no device input'})", skip=True)
        return
    short = dict(s, steps=min(s["steps"], 6), resolution=min(s["resolution"], 512))
    graph = train_graph(info, ckpt, short)
    graph["3"]["inputs"]["device"] = "gpu:1"
    h = wait_prompt(client, client.queue(graph), args.timeout)
    ok, err = prompt_ok(h)
    if not ok:
        stage("second_gpu", False, f"train prompt on gpu:1 failed: {err}")
        return
    job_id = h["outputs"]["3"]["unziplora_job"][0]
    wait_job(client, job_id, args.timeout, min_step=1)
    beside_ok, beside_err = prompt_ok(wait_prompt(client, client.queue(
        sample_graph(ckpt, s["sample_size"], s["sample_steps"], 4, prefix="beside_gpu1")), args.timeout))
    job = wait_job(client, job_id, args.timeout)
    i = job.get("info", {})
    ok = job["state"] == "done" and i.get("device") == "cuda:1" and not i.get("gpu_reserved") and beside_ok
    stage("second_gpu", ok, f"job {job['state']} {job.get('error') or ''} on {i.get('device')}, peak alloc there "
                            f"{_gib(i.get('gpu_peak_allocated'))} GiB, reserved process-wide {i.get('gpu_reserved')}; "
                            f"prompt on ComfyUI's device: {'ok' if beside_ok else beside_err}")


def _gib(n):
    return None if n is None else round(n / 2**30, 2)


def write_results(path: Path, result: dict) -> None:
    lines = [f"\n## gpu_check {result['date']} on {result.get('device') or 'unknown device'}\n",
             f"- ComfyUI {result.get('comfyui')}, dynamic VRAM {result.get('dynamic_vram')}, "
             f"settings {json.dumps(result['settings'])}",
             *[f"- {k}: {v.get('verdict') or ('PASS' if v['pass'] else 'FAIL')} ({v.get('s')} s) {v['detail']}"
               for k, v in result["stages"].items()],
             f"- job peak allocated {result.get('job_peak_allocated_gib')} GiB, reserved "
             f"{result.get('job_peak_reserved_gib')} GiB, s/step {result.get('s_per_step')}",
             f"- OOM: {result.get('oom_lines') or 'none'}; total {result.get('total_s')} s", ""]
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
