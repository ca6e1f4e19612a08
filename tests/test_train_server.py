"""The trainer in a live ComfyUI server, driven over HTTP and the websocket as a browser would."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from comfy_server import PromptRejected, events_of, make_base_dir, start_server

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("test")


def _sample_image(path: Path, size: int) -> None:
    spec = importlib.util.spec_from_file_location("sample_image", REPO / "scripts" / "sample_image.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path.parent.mkdir(parents=True, exist_ok=True)
    mod.make_sketch(size, size).save(path)


# The module's run: 64 px (a step is ~3x cheaper than at 128 and nothing here needs more), 16 steps so that a cancel
# after step 5 still lands well before the end, previews at the last step.
RUN = dict(resolution=64, steps=16, preview_every=16)


def train_graph(ckpt: str, image: str = "cat.png", **overrides) -> dict:
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], image=["2", 0], content_prompt="A sks cat",
                  style_prompt="A cat in sketch style", combined_prompt="", name="cat", mode="unziplora", steps=12,
                  rank=4, lr_content=5e-5, lr_style=5e-5, lr_merger=5e-3, column_ratio=0.1, selections=2,
                  orth_lambda=0.5, resolution=128, seed=0, checkpoint_every=4, preview_every=0, preview_steps=2,
                  gradient_checkpointing="off", precision="auto", run_mode="background")
    inputs.update(overrides)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "UnZipLoRATrain", "inputs": inputs},
    }


def sample_graph(ckpt: str, lora: str | None = None, seed: int = 1) -> dict:
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a sks cat", "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "seed": seed, "steps": 2, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "smoke"}},
    }
    if lora:
        g["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                          "strength_model": 1.0, "strength_clip": 1.0}}
        g["7"]["inputs"]["model"] = ["10", 0]
    return g


def wait_job(client, job_id: str, states=("done", "failed", "cancelled", "interrupted"), timeout=240.0,
             min_step: int | None = None) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        job = client.get_json(f"/unziplora/jobs/{job_id}")
        if job["state"] in states or (min_step is not None and job["step"] >= min_step):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}")


def job_id_of(history: dict, node: str = "3") -> str:
    assert history.get("status", {}).get("status_str") == "success", history.get("status")
    return history["outputs"][node]["unziplora_job"][0]


@pytest.fixture(scope="module")
def server(comfy_server):
    _sample_image(comfy_server.base_dir / "input" / "cat.png", 160)
    _sample_image(comfy_server.base_dir / "input" / "small.png", 32)
    return comfy_server


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint.name


@pytest.fixture(scope="module")
def finished_run(server, ckpt):
    """One uninterrupted background run, with a stock graph queued while it trains."""
    client = server.client()
    with client.follow() as events:
        t0 = time.time()
        pid = client.queue(train_graph(ckpt, **RUN))
        events.until_done(pid, timeout=120)
        prompt_s = time.time() - t0
        job_id = job_id_of(client.history(pid))
        state_at_return = client.get_json(f"/unziplora/jobs/{job_id}")["state"]
        stock = client.queue(sample_graph(ckpt))
        events.until_done(stock, timeout=180)

        def job_final(e):
            d = e.get("data") or {}
            return (e.get("type") == "unziplora.progress" and d.get("kind") == "state"
                    and d["job"]["id"] == job_id and d["job"]["state"] in ("done", "failed", "cancelled"))

        if not any(job_final(e) for e in events.events):
            events.until(job_final, timeout=240)
        job = wait_job(client, job_id)
    return dict(client=client, job=job, prompt_s=prompt_s, state_at_return=state_at_return,
                events=list(events.events), stock=stock)


def test_train_prompt_returns_while_job_runs_and_queue_stays_free(finished_run):
    r = finished_run
    assert r["state_at_return"] in ("queued", "running"), "the node must return before training ends"
    assert r["job"]["state"] == "done", r["job"].get("error")
    hist = r["client"].history(r["stock"])
    assert hist["status"]["status_str"] == "success"
    assert hist["outputs"]["9"]["images"], "the stock graph queued during training produced no image"
    LOG.warning("train prompt returned in %.2f s", r["prompt_s"])


def test_unchanged_run_reuses_the_job_and_train_trains_again(finished_run, server, ckpt):
    """Issue 21.1: the stock Run of an unchanged graph starts no second job, whether ComfyUI's cache answers
    (queued twice in a row) or the node has to (another graph ran in between, emptying the cache); the panel's
    Train button (a fresh FORCE_KEY input) starts one."""
    client = finished_run["client"]
    done = finished_run["job"]
    before = {j["id"] for j in client.get_json("/unziplora/jobs")["jobs"]}
    graph = train_graph(ckpt, **RUN)  # exactly what finished_run queued
    with client.follow() as events:
        first = client.queue(graph)  # the stock graph ran since: the node itself finds its job
        events.until_done(first, timeout=120)
        second = client.queue(graph)  # straight after: ComfyUI's cache answers
        seen = events.until_done(second, timeout=120)
    assert job_id_of(client.history(first)) == done["id"]
    assert job_id_of(client.history(second)) == done["id"]
    cached = [n for e in seen if e.get("type") == "execution_cached" and e["data"].get("prompt_id") == second
              for n in e["data"]["nodes"]]
    assert "3" in cached, seen
    assert {j["id"] for j in client.get_json("/unziplora/jobs")["jobs"]} == before, "Run started a job"

    forced = train_graph(ckpt, **RUN)
    forced["3"]["inputs"]["unziplora_train"] = "train-again-1"  # what the panel's Train button adds
    with client.follow() as events:
        pid = client.queue(forced)
        events.until_done(pid, timeout=120)
    new_id = job_id_of(client.history(pid))
    assert new_id != done["id"] and new_id not in before
    client.post_json(f"/unziplora/jobs/{new_id}/cancel", {})
    assert wait_job(client, new_id)["state"] in ("cancelled", "done")

    # a job that ended without LoRAs is not reused: Run trains again
    plain = train_graph(ckpt, name="cat_rerun", steps=40, checkpoint_every=0)
    ids = []
    for _ in range(2):
        with client.follow() as events:
            pid = client.queue(plain)
            events.until_done(pid, timeout=120)
        ids.append(job_id_of(client.history(pid)))
        client.post_json(f"/unziplora/jobs/{ids[-1]}/cancel", {})
        assert wait_job(client, ids[-1])["state"] == "cancelled"
    assert ids[0] != ids[1], "Run reused a cancelled job"


def test_progress_events_arrive_over_websocket(finished_run):
    ev = [e for e in finished_run["events"] if e.get("type") == "unziplora.progress"]
    steps = [e["data"]["job"]["step"] for e in ev if e["data"]["kind"] == "progress"]
    assert steps, "no progress events arrived"
    assert steps == sorted(steps) and steps[-1] >= 1
    states = [e["data"]["job"]["state"] for e in ev if e["data"]["kind"] == "state"]
    assert "running" in states


def test_previews_are_announced_and_served(finished_run):
    job = finished_run["job"]
    assert [p["kind"] for p in job["previews"]] == ["content", "style", "combined"]
    announced = [e for e in finished_run["events"]
                 if e.get("type") == "unziplora.progress" and e["data"]["kind"] == "preview"]
    assert announced, "no preview event arrived"
    from io import BytesIO

    from PIL import Image

    for p in job["previews"]:
        png = finished_run["client"].view(p["filename"], p["subfolder"], p["type"])
        assert Image.open(BytesIO(png)).size == (RUN["resolution"],) * 2


def test_files_load_in_stock_loraloader_with_masks_baked(finished_run, server, ckpt):
    job = finished_run["job"]
    # job records show paths relative to ComfyUI's base directory, never the server's absolute layout
    assert not any(Path(p).is_absolute() for p in job["outputs"].values()), job["outputs"]
    out = {k: str(server.base_dir / p) for k, p in job["outputs"].items()}
    for key in ("content", "style", "bundle"):
        assert Path(out[key]).is_file(), f"{key} file missing: {out[key]}"
    assert Path(out["content"]).parent.name == "unziplora" and Path(out["content"]).parent.parent.name == "loras"
    assert Path(out["bundle"]).parent.name == "unziplora" and Path(out["bundle"]).parent.parent.name == "models"
    with safe_open(out["content"], "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["unziplora.content_prompt"] == "A sks cat"

    # masks are baked into lora_up: rows outside the bundle's mask are zero, rows inside are not all zero
    bundle = load_file(out["bundle"])
    content = load_file(out["content"])
    checked = 0
    for key, mask in bundle.items():
        side, _, rest = key.partition(".")
        path, _, kind = rest.rpartition(".")
        if side != "content" or kind != "mask" or mask.all():
            continue
        up = content[f"lora_unet_{path.replace('.', '_')}.lora_up.weight"].float()
        assert torch.all(up[~mask] == 0), path
        assert torch.any(up[mask] != 0), path
        checked += 1
    assert checked > 0, "no masked content layer found in the bundle"

    # the stock LoraLoader consumes every key
    client = finished_run["client"]
    log_before = len(server.log())
    for side in ("content", "style"):
        name = f"unziplora/{Path(out[side]).name}"
        with client.follow() as events:
            pid = client.queue(sample_graph(ckpt, lora=name, seed=2))
            events.until_done(pid, timeout=180)
        assert client.history(pid)["status"]["status_str"] == "success"
    assert "lora key not loaded" not in server.log()[log_before:]


def test_cancel_then_resume_matches_uninterrupted(finished_run, server, ckpt):
    client = finished_run["client"]
    reference = load_file(server.base_dir / finished_run["job"]["outputs"]["content"])
    workflow = {"extra_pnginfo": {"workflow": {"id": "workflow-a", "nodes": []}}}  # as the frontend sends it
    with client.follow() as events:
        pid = client.queue(train_graph(ckpt, name="cat_resumed", **dict(RUN, preview_every=0)),
                           extra_data=workflow)
        events.until_done(pid, timeout=120)
    job_id = job_id_of(client.history(pid))
    assert client.get_json(f"/unziplora/jobs/{job_id}")["info"]["workflow_id"] == "workflow-a"
    wait_job(client, job_id, min_step=5)
    status, cancelled = client.post_json(f"/unziplora/jobs/{job_id}/cancel", {})
    assert status == 200 and cancelled["state"] in ("cancelling", "cancelled"), cancelled
    job = wait_job(client, job_id)
    assert job["state"] == "cancelled" and job["resumable"] and job["checkpoint"], job
    assert 5 <= job["step"] < RUN["steps"] and (server.base_dir / job["checkpoint"]).is_file()

    with client.follow() as events:
        status, resumed = client.post_json(f"/unziplora/jobs/{job_id}/resume", {"client_id": client.client_id})
        assert status == 200, resumed
        rpid = resumed["prompt_id"]
        events.until_done(rpid, timeout=120)
    new_id = job_id_of(client.history(rpid))
    assert new_id != job_id
    done = wait_job(client, new_id)
    assert done["state"] == "done" and done["resumed_from"] == job_id, done
    assert done["info"]["workflow_id"] == "workflow-a", done["info"]  # the panel still finds it
    result = load_file(server.base_dir / done["outputs"]["content"])
    assert result.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(result[k].float(), reference[k].float(), rtol=2e-3, atol=1e-4, msg=k)


def test_blocking_mode_trains_inside_the_prompt(server, ckpt):
    client = server.client()
    with client.follow() as events:
        pid = client.queue(train_graph(ckpt, name="blocking", steps=4, run_mode="blocking"))
        seen = events.until_done(pid, timeout=240)
    job = client.get_json(f"/unziplora/jobs/{job_id_of(client.history(pid))}")
    assert job["state"] == "done" and (server.base_dir / job["outputs"]["content"]).is_file(), job
    # ComfyUI's own progress bar moved for the train node while the prompt ran
    bars = [e["data"] for e in seen if e.get("type") == "progress" and e["data"].get("node") == "3"]
    assert bars and bars[-1]["max"] == 4
    assert job["info"]["base_model"] == ckpt
    # a CPU job leaves one core to ComfyUI (training.service.cpu_training_threads)
    assert job["info"]["cpu_threads"] == max(1, len(os.sched_getaffinity(0)) - 1), job["info"]


def test_second_cancel_and_unknown_ids(finished_run):
    client = finished_run["client"]
    job_id = finished_run["job"]["id"]
    status, body = client.post_json(f"/unziplora/jobs/{job_id}/cancel", {})
    assert status == 409 and "done" in body["error"], body
    status, body = client.post_json(f"/unziplora/jobs/{job_id}/resume", {})
    assert status == 409 and "cannot be resumed" in body["error"], body
    for method, path in (("GET", "/unziplora/jobs/0123456789ab"), ("POST", "/unziplora/jobs/0123456789ab/cancel"),
                         ("POST", "/unziplora/jobs/0123456789ab/resume")):
        status, body, _ = client.request(method, path, {} if method == "POST" else None)
        assert status == 404 and b"0123456789ab" in body, (path, status, body)
    status, body, _ = client.request("GET", "/unziplora/jobs/nope")
    assert status == 400 and b"not a job id" in body, body  # ids are checked against the format first
    listed = client.get_json("/unziplora/jobs")["jobs"]
    assert job_id in [j["id"] for j in listed]


@pytest.mark.parametrize("overrides, needle", [
    (dict(content_prompt="   "), "content_prompt"),
    (dict(image="small.png"), "shorter side"),
    (dict(name="../evil"), "name"),
    (dict(resolution=100), "resolution"),
])
def test_bad_inputs_fail_with_a_message_naming_the_input(server, ckpt, overrides, needle):
    client = server.client()
    with client.follow() as events:
        try:
            pid = client.queue(train_graph(ckpt, **overrides))
        except PromptRejected as e:  # rejected at validation (ComfyUI's own min/max/step checks)
            assert needle in str(e.body), e.body
            return
        seen = events.until_done(pid, timeout=120)
    errors = events_of(seen, "execution_error", pid)
    assert errors, f"bad input {overrides} did not fail"
    assert needle in errors[0]["exception_message"], errors[0]["exception_message"]
    # the history keeps the same message for a browser that connects later
    status = client.history(pid)["status"]
    assert status["status_str"] == "error"
    kept = [m[1] for m in status["messages"] if m[0] == "execution_error"]
    assert kept and needle in kept[0]["exception_message"], status


def test_restart_mid_run_shows_interrupted_and_resumes(tmp_path, tiny_checkpoint):
    base = make_base_dir(tmp_path / "base", checkpoint=tiny_checkpoint)
    _sample_image(base / "input" / "cat.png", 160)
    server = start_server(base)
    try:
        client = server.client()
        with client.follow() as events:
            # a checkpoint at step 3; killed at step 4 or 5, before the next one (6)
            pid = client.queue(train_graph(tiny_checkpoint.name, name="restart", steps=10, checkpoint_every=3))
            events.until_done(pid, timeout=120)
        job_id = job_id_of(client.history(pid))
        wait_job(client, job_id, min_step=4)
        server.kill()
        server = server.restart()
        client = server.client()
        job = client.get_json(f"/unziplora/jobs/{job_id}")
        assert job["state"] == "interrupted" and job["resumable"], job
        assert job["checkpoint"].endswith("step_000003.pt"), job
        with client.follow() as events:
            status, resumed = client.post_json(f"/unziplora/jobs/{job_id}/resume", {"client_id": client.client_id})
            assert status == 200, resumed
            events.until_done(resumed["prompt_id"], timeout=120)
        new_id = job_id_of(client.history(resumed["prompt_id"]))
        done = wait_job(client, new_id)
        assert done["state"] == "done", done
        assert (server.base_dir / done["outputs"]["style"]).is_file()
    finally:
        server.stop()
