"""The main job, end to end through a real ComfyUI server: train a content/style pair on one image in the
background, then use it (content alone, style alone, both together) and save the images.

    python scripts/main.py                         # the embedded tiny SDXL, a drawn sketch, CPU, ~2 minutes
    python scripts/main.py --ckpt /path/sd_xl_base_1.0.safetensors --image cat.png --gpu   # a real SDXL

Everything goes over HTTP and the websocket, as from a browser: the same nodes a user drags into a graph.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from comfy_server import ensure_tiny_checkpoint, make_base_dir, start_server  # noqa: E402
from sample_image import make_sketch  # noqa: E402


def train_graph(ckpt: str, image: str, a) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "UnZipLoRATrain", "inputs": dict(
            model=["1", 0], clip=["1", 1], vae=["1", 2], image=["2", 0], content_prompt=a.content_prompt,
            style_prompt=a.style_prompt, combined_prompt="", name=a.name, mode=a.mode, steps=a.steps, rank=a.rank,
            lr_content=5e-5, lr_style=5e-5, lr_merger=5e-3, column_ratio=0.1, selections=3, orth_lambda=0.5,
            resolution=a.resolution, seed=a.seed, checkpoint_every=max(1, a.steps // 3), preview_every=0, preview_steps=8,
            gradient_checkpointing="auto", precision="auto", run_mode="background")},
    }


def sample_graph(ckpt: str, text: str, a, loras=(), prefix="unziplora") -> dict:
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": a.resolution, "height": a.resolution,
                                                           "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "seed": a.seed, "steps": a.sample_steps,
                                                   "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
                                                   "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    model = ["1", 0]
    for i, lora in enumerate(loras):
        nid = str(20 + i)
        g[nid] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora,
                                                                  "strength_model": 1.0}}
        model = [nid, 0]
    g["7"]["inputs"]["model"] = model
    return g


def both_graph(ckpt: str, bundle: str, a, texts) -> dict:
    """Loader -> Apply(both) -> Prompts (three streams) -> KSampler: the combined mode."""
    combined, content, style = texts
    g = sample_graph(ckpt, combined, a, prefix="unziplora_both")
    g["30"] = {"class_type": "UnZipLoRALoader", "inputs": {"bundle": bundle}}
    g["31"] = {"class_type": "UnZipLoRAApply", "inputs": {"model": ["1", 0], "mode": "both", "content_from": ["30", 0],
                                                          "content_strength": 1.0, "style_strength": 1.0}}
    g["32"] = {"class_type": "UnZipLoRAPrompts", "inputs": {"clip": ["1", 1], "prompt": combined,
                                                            "content_prompt": content, "style_prompt": style,
                                                            "negative_prompt": "blurry, low quality"}}
    g["7"]["inputs"].update(model=["31", 0], positive=["32", 0], negative=["32", 1])
    del g["4"], g["5"]
    return g


def run_graph(client, graph: dict, timeout: float) -> dict:
    with client.follow() as events:
        pid = client.queue(graph)
        events.until_done(pid, timeout=timeout)
    hist = client.history(pid)
    status = hist.get("status", {})
    if status.get("status_str") != "success":
        msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
        raise SystemExit(f"graph failed: {msgs[0][1].get('exception_message') if msgs else status}")
    return hist


def saved_images(hist: dict) -> list[dict]:
    return [img for out in hist["outputs"].values() for img in out.get("images", [])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="an SDXL checkpoint (.safetensors); default: the embedded tiny random SDXL")
    ap.add_argument("--image", help="the image to unzip; default: a drawn sketch of a cat")
    ap.add_argument("--out", default=str(REPO / "unziplora-output"), help="where the LoRAs and images are copied")
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: CPU)")
    ap.add_argument("--steps", type=int, help="training steps (default: 600 real / 24 tiny)")
    ap.add_argument("--resolution", type=int, help="training and sampling size (default: 1024 real / 128 tiny)")
    ap.add_argument("--rank", type=int, help="LoRA rank (default: 64 real / 8 tiny)")
    ap.add_argument("--sample-steps", type=int, help="sampling steps (default: 30 real / 4 tiny)")
    ap.add_argument("--mode", default="unziplora")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="main_job")
    ap.add_argument("--content-prompt", default="A sks cat")
    ap.add_argument("--style-prompt", default="A cat in sketch style")
    a = ap.parse_args()
    real = a.ckpt is not None
    a.steps = a.steps or (600 if real else 24)
    a.resolution = a.resolution or (1024 if real else 128)
    a.rank = a.rank or (64 if real else 8)
    a.sample_steps = a.sample_steps or (30 if real else 4)
    if real and not a.gpu:
        print("note: a real SDXL on the CPU takes about a minute per step; add --gpu if you have one")

    t0 = time.time()
    ckpt = Path(a.ckpt).resolve() if real else ensure_tiny_checkpoint()
    base = make_base_dir(Path(tempfile.mkdtemp(prefix="unziplora-main-")), checkpoint=ckpt)
    image_path = base / "input" / "unzip_me.png"
    if a.image:
        shutil.copy(a.image, image_path)
    else:
        make_sketch(512, 512).save(image_path)
    print(f"[main] base model: {ckpt.name}; image: {a.image or 'drawn sketch'}; ComfyUI base dir: {base}")
    server = start_server(base, cpu=not a.gpu)
    try:
        client = server.client()
        print(f"[main] ComfyUI up at {server.url} in {server.start_s:.0f} s")
        hist = run_graph(client, train_graph(ckpt.name, image_path.name, a), timeout=600)
        job_id = hist["outputs"]["3"]["unziplora_job"][0]
        print(f"[main] train node returned; background job {job_id} (the queue is free meanwhile)")
        last = -1
        while True:
            job = client.get_json(f"/unziplora/jobs/{job_id}")
            if job["step"] != last and job["step"]:
                last = job["step"]
                eta = f", ETA {job['eta_s']:.0f} s" if job.get("eta_s") is not None else ""
                print(f"[main]   step {job['step']}/{job['total']}  loss {job['loss']:.4f}{eta}", flush=True)
            if job["state"] in ("done", "failed", "cancelled", "interrupted"):
                break
            time.sleep(1.0)
        if job["state"] != "done":
            print(f"[main] training {job['state']}: {job.get('error')}")
            return 1
        outs = job["outputs"]
        lora_c = f"unziplora/{Path(outs['content']).name}"
        lora_s = f"unziplora/{Path(outs['style']).name}"
        runs = [("content alone", sample_graph(ckpt.name, "A sks cat on the beach", a, [lora_c], "content_alone")),
                ("style alone", sample_graph(ckpt.name, "A dog in sketch style", a, [lora_s], "style_alone"))]
        if "UnZipLoRAApply" in client.object_info():
            texts = ("A sks cat on a skateboard in sketch style", "A sks cat on a skateboard",
                     "A cat on a skateboard in sketch style")
            runs.append(("both (three prompts)", both_graph(ckpt.name, Path(outs["bundle"]).name, a, texts)))
        out_dir = Path(a.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        for key in ("content", "style", "bundle"):
            # job records show paths relative to ComfyUI's base directory (they never expose the server's layout)
            shutil.copy(base / outs[key], out_dir / Path(outs[key]).name)
        for label, graph in runs:
            hist = run_graph(client, graph, timeout=600)
            for img in saved_images(hist):
                dest = out_dir / img["filename"]
                dest.write_bytes(client.view(img["filename"], img.get("subfolder", ""), img.get("type", "output")))
                print(f"[main] {label}: {dest}")
        print(f"[main] LoRAs: {out_dir / Path(outs['content']).name}, {out_dir / Path(outs['style']).name}")
        print(f"[main] bundle (mergers + masks): {out_dir / Path(outs['bundle']).name}")
        print(f"[main] done in {time.time() - t0:.0f} s")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
