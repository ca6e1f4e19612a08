"""The Ray farm against two live ComfyUI workers on loopback: 4 images, worker A killed mid-job (it does not
come back within the grace period, so its image is trained again on B), a worker refusing the graph, and a
re-run that skips what the manifest has. Local Ray, kept small (2 CPUs, 100 MB object store)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from comfy_server import make_base_dir, start_server

pytest.importorskip("ray")
pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[1]


def train_workflow(ckpt: str, **overrides) -> dict:
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], image=["2", 0], content_prompt="A sks cat",
                  style_prompt="A cat in sketch style", combined_prompt="", name="shop", mode="unziplora", steps=8,
                  rank=4, lr_content=5e-5, lr_style=5e-5, lr_merger=5e-3, column_ratio=0.1, selections=2,
                  orth_lambda=0.5, resolution=64, seed=0, checkpoint_every=2, preview_every=0, preview_steps=1,
                  gradient_checkpointing="off", precision="auto", run_mode="background")
    inputs.update(overrides)
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
            "3": {"class_type": "UnZipLoRATrain", "inputs": inputs}}


def run_farm(tmp: Path, workflow: dict, workers, out: Path, grace: float, timeout: float = 1500):
    wf = tmp / f"workflow-{len(list(tmp.glob('workflow-*')))}.json"
    wf.write_text(json.dumps(workflow))
    cmd = [sys.executable, "-m", "farm", "--images", str(tmp / "images"), "--workflow", str(wf), "--out", str(out),
           "--grace", str(grace), "--num-cpus", "2", "--object-store-mb", "100"]
    for w in workers:
        cmd += ["--worker", w]
    env = dict(os.environ, RAY_DEDUP_LOGS="0", RAY_USAGE_STATS_ENABLED="0")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


@pytest.fixture(scope="module")
def workers(tmp_path_factory, tiny_checkpoint):
    handles = []
    for label in ("a", "b"):
        base = make_base_dir(tmp_path_factory.mktemp(f"farm_worker_{label}"), checkpoint=tiny_checkpoint)
        handles.append(start_server(base, extra_env={"UNZIPLORA_CPU_THREADS": "1"}))
    yield handles
    for h in handles:
        h.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("farm")
    folder = tmp / "images"
    folder.mkdir()
    for i, stem in enumerate(("boot", "cap", "mug", "vase")):
        Image.new("RGB", (128 + 16 * i, 128), (50 * i, 100, 220 - 40 * i)).save(folder / f"{stem}.png")
    (folder / "mug.txt").write_text("a blue mug\n")
    return tmp


def test_refused_graph_fails_each_image_with_the_workers_message(workers, images):
    out = images / "refused"
    proc, _ = run_farm(images, train_workflow("no_such_model.safetensors"), [workers[1].url], out, grace=5)
    assert proc.returncode == 1, proc.stderr[-3000:]
    entries = json.loads((out / "manifest.json").read_text())["images"]
    assert sorted(entries) == ["boot.png", "cap.png", "mug.png", "vase.png"]
    for e in entries.values():
        assert e["status"] == "failed" and "no_such_model.safetensors" in e["error"], e
    assert workers[1].alive()


def test_two_workers_one_killed_mid_job_every_image_one_pair(workers, images, tiny_checkpoint):
    a, b = workers
    out = images / "out"
    killed = {}

    def kill_a_mid_job():
        client, end = a.client(), time.time() + 1200
        while time.time() < end:
            try:
                running = [j for j in client.get_json("/unziplora/jobs")["jobs"]
                           if j["state"] == "running" and j["step"] >= 3 and j.get("checkpoint")]
            except Exception:
                running = []
            if running:
                killed["job"] = running[0]
                a.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_a_mid_job, daemon=True)
    watcher.start()
    proc, seconds = run_farm(images, train_workflow(tiny_checkpoint.name), [a.url, b.url], out, grace=4)
    watcher.join(5)
    print(proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert killed, "worker A was never seen mid-job"
    lost_image = killed["job"]["info"]["requested_name"]
    manifest = json.loads((out / "manifest.json").read_text())["images"]
    assert sorted(manifest) == ["boot.png", "cap.png", "mug.png", "vase.png"]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["shop_boot", "shop_cap", "shop_mug", "shop_vase"], folders  # nothing half-written left
    for image, e in manifest.items():
        assert e["status"] == "done" and e["steps"] == 8, e
        d = out / f"shop_{image[:-4]}"
        files = sorted(p.name for p in d.iterdir() if p.is_file())
        assert len([f for f in files if f.endswith("_content.safetensors")]) == 1, files
        assert len([f for f in files if f.endswith("_style.safetensors")]) == 1, files
        for key in ("content", "style", "bundle"):
            with safe_open(str(out / e["files"][key]), "pt") as f:
                assert list(f.keys()), (image, key)
        assert e["loss"] is not None and e["job"] and e["worker"] in (a.url, b.url)
    # the killed worker's image: lost on A, trained again on B, once
    lost = manifest[f"{lost_image.removeprefix('shop_')}.png"]
    assert lost["worker"] == b.url and [t["outcome"] for t in lost["attempts"]][:1] == ["worker lost"], lost
    # the caption reached the worker
    mug_job = b.client().get_json(f"/unziplora/jobs/{manifest['mug.png']['job']}") if manifest["mug.png"]["worker"] \
        == b.url else None
    if mug_job:
        assert mug_job["info"]["content_prompt"] == "A sks blue mug"
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["image"] for r in rows] == sorted(manifest) and all(r["status"] == "done" for r in rows)
    assert b.alive() and b.client().get_json("/unziplora/jobs")["jobs"], "the surviving worker kept serving"
    print(f"farm run: {seconds:.0f} s for 4 images on 2 workers, one killed")

    # a re-run trains nothing and keeps the manifest
    before = (out / "manifest.json").read_text()
    jobs_before = len(b.client().get_json("/unziplora/jobs")["jobs"])
    proc, _ = run_farm(images, train_workflow(tiny_checkpoint.name), [b.url], out, grace=4)
    assert proc.returncode == 0 and "0 image(s) to train" in proc.stderr, proc.stderr[-2000:]
    assert (out / "manifest.json").read_text() == before
    assert len(b.client().get_json("/unziplora/jobs")["jobs"]) == jobs_before
