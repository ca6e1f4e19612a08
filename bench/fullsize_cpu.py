#!/usr/bin/env python
"""The full-size SDXL path, for real, on this CPU (issue 23): a live ComfyUI with the pack, random full-size weights.

    (set -a; . .comfyui-b.env; set +a; nice -n 5 \\
        .venv/bin/python bench/fullsize_cpu.py --results bench/RESULTS.md)        # host b (ComfyUI 0.33.0)

The server runs `--cpu --bf16-unet` (the full UNet in bf16: 5.1 GB). Stages, each `[fullsize] STAGE <name>:
PASS|FAIL`:
  checkpoint  full-size random SDXL (2.57 B UNet, full CLIP, VAE), fp16, cached in
              ~/.cache/unziplora-dev/fullsize/ (generated once, under the running host's ComfyUI)
  server      ComfyUI at $COMFYUI_DIR with this pack, API only
  stock       KSampler, --sample-size px, 2 steps
  train       UnZipLoRATrain, paper mode, rank 64, bf16, --res px, --steps (4) steps, a checkpoint every step and a
              preview (1 sampling step) every 2, with a stock prompt queued beside it once the job has begun
  resume      the same job cancelled once its first preview is out, resumed from the panel's route, finished
  loras       KSampler through stock LoraLoader (content, then style)
  pair        UnZipLoRALoader -> UnZipLoRAApply(both) -> UnZipLoRAPrompts -> KSampler
  inspect     UnZipLoRAInspect on the pair
The server's RSS is sampled every 0.5 s: its peak, its level after the stock prompt, and the job's added host RAM
(peak while the job runs minus the level before it). One JSON line `[fullsize] RESULT {...}`; --results appends
a markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from gpu_check import prompt_ok, sample_graph, train_graph, wait_job, wait_prompt  # noqa: E402

GB = 1e9
CACHE = Path(os.environ.get("UNZIPLORA_CACHE") or Path.home() / ".cache" / "unziplora-dev") / "fullsize"
STAGES = ("checkpoint", "server", "stock", "train", "resume", "loras", "pair", "inspect")


def say(*a):
    print("[fullsize]", *a, flush=True)


def ensure_checkpoint() -> tuple[Path, str]:
    """The cached full-size checkpoint: scripts/tiny_sdxl.py's own `--size full` generator (the one gpu_check runs),
    under whichever host $COMFYUI_DIR names; regenerated only when its configuration hash changed."""
    import tiny_sdxl

    path = CACHE / tiny_sdxl.FILENAMES["full"]
    how = "cached" if tiny_sdxl.is_current(path, "full") else "generated"
    return tiny_sdxl.ensure_checkpoint("full", CACHE), how


class RssSampler(threading.Thread):
    """The server process's resident set (VmRSS), every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.stop = pid, every, [], False

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self):
        while not self.stop:
            self.samples.append((time.time(), self.rss()))
            time.sleep(self.every)

    def peak(self, since: float = 0.0, until: float | None = None) -> int:
        vals = [v for t, v in self.samples if t >= since and (until is None or t <= until)]
        return max(vals, default=0)


def start(args, work: Path, ckpt: Path):
    from comfy_server import make_base_dir, start_server
    import sample_image

    base = make_base_dir(work / "base", checkpoint=ckpt)
    sample_image.make_sketch(512, 512).save(base / "input" / "gpu_check.png")
    front = work / "frontend"
    front.mkdir(exist_ok=True)
    (front / "index.html").write_text("<html>fullsize</html>")
    return start_server(base, cpu=True, extra_args=["--front-end-root", str(front), "--bf16-unet"], timeout=600)


def pair_graph(ckpt: str, bundle: str, size: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": bundle}},
        "3": {"class_type": "UnZipLoRAApply", "inputs": {"model": ["1", 0], "mode": "both", "content_from": ["2", 0],
                                                         "content_strength": 1.0, "style_strength": 1.0}},
        "4": {"class_type": "UnZipLoRAPrompts", "inputs": {
            "clip": ["1", 1], "prompt": "", "content_prompt": "", "style_prompt": "A sks cat in sketch style",
            "negative_prompt": "", "content_from": ["2", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["5", 0], "seed": 5,
            "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "fullsize_pair"}},
    }


def inspect_graph(bundle: str) -> dict:
    return {
        "1": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": bundle}},
        "2": {"class_type": "UnZipLoRAInspect", "inputs": {"pair": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fullsize_inspect"}},
    }


def run(args) -> dict:
    result = {"stages": {}, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": dict(steps=args.steps, res=args.res, rank=args.rank, sample_size=args.sample_size,
                               precision="bf16", server_args="--cpu --bf16-unet")}
    t0 = time.time()

    def stage(name, ok, detail=""):
        result["stages"][name] = {"pass": bool(ok), "detail": detail, "t": round(time.time() - t0, 1)}
        say(f"STAGE {name}: {'PASS' if ok else 'FAIL'} ({time.time() - t0:.0f} s) {detail}")
        return ok

    t = time.time()
    try:
        if args.tiny:
            from comfy_server import ensure_tiny_checkpoint

            ckpt, how = ensure_tiny_checkpoint(), "tiny, for a dry run"
        else:
            ckpt, how = ensure_checkpoint()
    except Exception as e:  # noqa: BLE001 -- every stage reports
        stage("checkpoint", False, f"{type(e).__name__}: {e}")
        return result
    stage("checkpoint", True, f"{ckpt.name} {ckpt.stat().st_size / GB:.2f} GB ({how}, {time.time() - t:.0f} s)")
    work = Path(args.work or tempfile.mkdtemp(prefix="fullsize_cpu_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        server = start(args, work, ckpt)
    except Exception as e:  # noqa: BLE001
        stage("server", False, f"{type(e).__name__}: {str(e)[-1500:]}")
        return result
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    try:
        stats = server.client().get_json("/system_stats")
        result["comfyui"] = stats.get("system", {}).get("comfyui_version")
        stage("server", True, f"ComfyUI {result['comfyui']}, up in {server.start_s:.0f} s")
        try:
            _stages(args, server, ckpt.name, stage, result, sampler)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 -- a timeout, a refused prompt or ^C (the
            # caller's time limit) fails its stage; the stages before it are still reported
            current = next(n for n in STAGES if n not in result["stages"])
            stage(current, False, f"{type(e).__name__}: {str(e)[:1500]}")
    finally:
        sampler.stop = True
        log = server.log()
        server.stop()
        (work / "comfyui.log").write_text(log)
        result["log"] = str(work / "comfyui.log")
        result["server_peak_rss_gb"] = round(sampler.peak() / GB, 2)
        if result.get("job_started_at"):  # also when a later stage failed or ran out of time
            result["job_added_host_gb"] = round(
                (sampler.peak(since=result["job_started_at"]) - result["rss_before_job_gb"] * GB) / GB, 2)
        result["rss_timeline_gb"] = [(round(t - t0), round(v / GB, 2)) for t, v in sampler.samples[::10]]
    result["pass"] = all(v["pass"] for v in result["stages"].values()) and len(result["stages"]) == len(STAGES)
    result["total_s"] = round(time.time() - t0, 1)
    return result


def _stages(args, server, ckpt, stage, result, sampler):
    client = server.client()
    timeout = args.timeout
    t = time.time()
    h = wait_prompt(client, client.queue(sample_graph(ckpt, args.sample_size, 2, 1, prefix="stock")), timeout)
    ok, err = prompt_ok(h)
    result["stock_s"] = round(time.time() - t, 1)
    result["rss_after_stock_gb"] = round(sampler.rss() / GB, 2)
    if not stage("stock", ok, err or f"{result['stock_s']} s, server RSS {result['rss_after_stock_gb']} GB"):
        return

    info = client.object_info("UnZipLoRATrain")
    graph = train_graph(info, ckpt, dict(steps=args.steps, rank=args.rank, resolution=args.res))
    graph["3"]["inputs"].update(name="fullsize", precision="bf16", checkpoint_every=1, preview_every=2,
                                preview_steps=1, selections=min(3, args.steps))
    before = sampler.rss()
    t_job = time.time()
    result.update(job_started_at=t_job, rss_before_job_gb=round(before / GB, 2))
    h = wait_prompt(client, client.queue(graph, extra_data={}), timeout)
    ok, err = prompt_ok(h)
    result["train_prompt_s"] = round(time.time() - t_job, 1)
    if not ok:
        stage("train", False, f"train prompt failed: {err}")
        return
    job_id = h["outputs"]["3"]["unziplora_job"][0]
    job = wait_job(client, job_id, timeout, min_step=1)
    beside = client.queue(sample_graph(ckpt, args.sample_size, 2, 2, prefix="beside"))
    beside_ok, beside_err = prompt_ok(wait_prompt(client, beside, timeout))
    beside_step = client.get_json(f"/unziplora/jobs/{job_id}")["step"]
    # cancel once the first preview (step 2) is shown and a checkpoint written, then resume from the checkpoint
    end = time.time() + timeout
    while time.time() < end:
        job = client.get_json(f"/unziplora/jobs/{job_id}")
        if (job.get("checkpoint") and job.get("previews")) or job["state"] not in ("queued", "running"):
            break
        time.sleep(1)
    previews = len(job.get("previews") or [])
    i = job.get("info", {})
    result.update(copy_s=i.get("copy_s"), copy_dtype=i.get("copy_dtype"), beside_ok=beside_ok,
                  beside_at_step=beside_step, s_per_step=round(1 / job["it_per_s"], 1) if job.get("it_per_s") else None)
    ok = job["state"] == "running" and bool(job.get("checkpoint")) and previews > 0 and beside_ok
    stage("train", ok, f"job {job['state']} {job.get('error') or ''} at step {job['step']}, checkpoint "
                       f"{Path(job.get('checkpoint') or '-').name}, {previews} preview(s), s/step "
                       f"{result['s_per_step']}, copy {i.get('copy_s')} s ({i.get('copy_dtype')}); prompt beside: "
                       f"{'ok' if beside_ok else beside_err} (done at job step {beside_step})")
    if not ok:
        return
    status, _ = client.post_json(f"/unziplora/jobs/{job_id}/cancel", {})
    cancelled = wait_job(client, job_id, timeout)
    status, resumed = client.post_json(f"/unziplora/jobs/{job_id}/resume", {"client_id": client.client_id})
    if status != 200:
        stage("resume", False, f"cancelled job {cancelled['state']} at step {cancelled['step']}; resume: {resumed}")
        return
    h = wait_prompt(client, resumed["prompt_id"], timeout)
    ok, err = prompt_ok(h)
    if not ok:
        stage("resume", False, f"resume prompt failed: {err}")
        return
    new_id = h["outputs"]["3"]["unziplora_job"][0]
    done = wait_job(client, new_id, timeout)
    result["job_wall_s"] = round(time.time() - t_job, 1)
    if done.get("it_per_s"):
        result["s_per_step_resumed"] = round(1 / done["it_per_s"], 1)
    stage("resume", done["state"] == "done" and done.get("resumed_from") == job_id,
          f"cancelled at step {cancelled['step']} ({cancelled['state']}), resumed job {done['state']} "
          f"{done.get('error') or ''} at step {done['step']}/{done['total']}")
    if done["state"] != "done":
        return
    outs = done["outputs"]
    sizes = {k: round(os.path.getsize(server.base_dir / outs[k]) / 1e6, 1) for k in ("content", "style", "bundle") if outs.get(k)}
    result["file_mb"] = sizes
    loras = [f"unziplora/{Path(outs[k]).name}" for k in ("content", "style")]
    ok, err = prompt_ok(wait_prompt(client, client.queue(sample_graph(ckpt, args.sample_size, 2, 3, loras,
                                                                      prefix="with_loras")), timeout))
    stage("loras", ok, err or f"stock LoraLoader x2; files MB {sizes}")
    bundle = Path(outs["bundle"]).name
    ok, err = prompt_ok(wait_prompt(client, client.queue(pair_graph(ckpt, bundle, args.sample_size)), timeout))
    stage("pair", ok, err or "Loader -> Apply(both) -> Prompts -> KSampler")
    h = wait_prompt(client, client.queue(inspect_graph(bundle)), timeout)
    ok, err = prompt_ok(h)
    images = (h.get("outputs", {}).get("3") or {}).get("images") or []
    if ok and images:
        result["inspect_png_bytes"] = len(client.view(images[0]["filename"], images[0].get("subfolder", "")))
    stage("inspect", ok and bool(images), err or f"map {images[0]['filename'] if images else 'missing'}")


def write_results(path: Path, r: dict, command: str) -> None:
    s = r["stages"]
    lines = [f"\n## Full-size SDXL on this CPU, live ComfyUI ({r['date']}, issue 23, bench/fullsize_cpu.py)\n",
             f"`{command}` -- ComfyUI {r.get('comfyui')} `{r['settings']['server_args']}`, random full-size "
             f"weights, paper mode rank {r['settings']['rank']}, bf16, {r['settings']['res']} px, "
             f"{r['settings']['steps']} steps; machine shared with other developers' runs (times are loaded).\n",
             "| stage | result | detail |", "|---|---|---|",
             *[f"| {k} | {'PASS' if v['pass'] else 'FAIL'} | {v['detail']} |" for k, v in s.items()], "",
             f"- server peak RSS {r.get('server_peak_rss_gb')} GB; after the stock prompt "
             f"{r.get('rss_after_stock_gb')} GB; the job added {r.get('job_added_host_gb')} GB at its peak "
             f"(server RSS before it {r.get('rss_before_job_gb')} GB)",
             f"- s/step {r.get('s_per_step')} (first run), {r.get('s_per_step_resumed')} (resumed); private copy "
             f"{r.get('copy_s')} s ({r.get('copy_dtype')}); files MB {r.get('file_mb')}", ""]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--sample-size", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--work", default=None)
    ap.add_argument("--results", type=Path, default=None, help="append a markdown section to this file")
    ap.add_argument("--checkpoint-only", action="store_true", help="make the cached checkpoint and exit")
    ap.add_argument("--tiny", action="store_true", help="a dry run of the stages on the tests' tiny checkpoint")
    args = ap.parse_args(argv)
    if args.checkpoint_only:
        path, how = ensure_checkpoint()
        say(f"{path} {path.stat().st_size / GB:.2f} GB ({how})")
        return 0
    r = run(args)
    say("RESULT " + json.dumps(r))
    if args.results:
        write_results(args.results, r, "bench/fullsize_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0 if r.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
