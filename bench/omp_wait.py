#!/usr/bin/env python
"""How long a live ComfyUI server takes for a small stock graph, under the OpenMP wait policy given: the measurement
behind scripts/test.sh's OMP_WAIT_POLICY=PASSIVE (several torch processes share the CI machine's 2 cores).

    .venv/bin/python bench/omp_wait.py                          # the policy in the environment (default: spinning)
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/omp_wait.py
    (set -a; . .comfyui-b.env; set +a; .venv/bin/python bench/omp_wait.py)       # host b

Start it beside another busy process (a test run, a benchmark) to see the difference; alone both policies are close.
The server runs on the tests' tiny checkpoint (made if missing); the graph: CheckpointLoaderSimple, two CLIPTextEncode,
KSampler (128 px, 2 steps, cfg 4), VAEDecode, SaveImage; three prompts with new text each (nothing cached).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from comfy_server import start_server  # noqa: E402


def graph(seed: int, text: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "cfg": 4.0,
                "steps": 2, "sampler_name": "euler", "scheduler": "normal", "seed": seed, "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "omp_wait"}}}


def main() -> None:
    import tiny_sdxl

    base = Path(tempfile.mkdtemp(prefix="omp_wait_"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "custom_nodes").mkdir()
    os.symlink(tiny_sdxl.ensure_checkpoint(), base / "models" / "checkpoints" / "tiny.safetensors")
    server = start_server(base)
    try:
        client = server.client()
        policy = os.environ.get("OMP_WAIT_POLICY", "(unset)")
        for i in range(3):
            t0 = time.time()
            client.run(graph(i, f"a photo of a cat {i}"), timeout=600)
            print(f"[omp_wait] OMP_WAIT_POLICY={policy} prompt {i}: {time.time() - t0:.1f} s", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
