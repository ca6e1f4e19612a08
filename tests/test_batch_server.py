"""Train Folder in a live server: one job per image, captions, names that never overwrite, cancel one, a restart
mid-batch, resume all, cancel all, and the job-files route (including hostile requests).

One server for the module (it is restarted mid-batch, so it is not the session's). The batch scenarios run on the
first host only (marker first_host_only, see FIRST_HOST_ONLY in conftest.py for the rule): they test the pack's own
batch logic, and the ComfyUI surfaces they go through are tested on every host by cheaper tests -- a prompt the
server queues for a resume (test_train_server, test_bad_inputs_server), a restart that marks jobs interrupted
(test_train_server::test_restart_mid_run_shows_interrupted_and_resumes), the pack's routes (test_job_files,
test_train_server). What differs between the hosts here -- whether POST /prompt checks Train Folder's folder -- is
tested on every host, against the session's server (test_bad_folders_are_refused_naming_them)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from comfy_server import make_base_dir, start_server

pytestmark = pytest.mark.server
one_host = pytest.mark.first_host_only
FINAL = ("done", "failed", "cancelled", "interrupted")


def folder_graph(ckpt: str, folder: str = "shoes", **overrides) -> dict:
    inputs = dict(model=["1", 0], clip=["1", 1], vae=["1", 2], folder=folder, content_prompt="A sks cat",
                  style_prompt="A cat in sketch style", combined_prompt="", name="cat", mode="unziplora", steps=6,
                  rank=4, lr_content=5e-5, lr_style=5e-5, lr_merger=5e-3, column_ratio=0.1, selections=2,
                  orth_lambda=0.5, resolution=128, seed=0, checkpoint_every=2, preview_every=0, preview_steps=2,
                  gradient_checkpointing="off", precision="auto")
    inputs.update(overrides)
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "5": {"class_type": "UnZipLoRATrainFolder", "inputs": inputs}}


def make_folder(root: Path, names, size=96) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (size + 8 * i, size), (40 * i % 255, 120, 200 - 30 * i)).save(root / name)


def get(client, path):
    return client.get_json(path)


def status_of(client, path) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(client.url + path, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def batch_view(client, batch_id) -> dict:
    return next(b for b in get(client, "/unziplora/batches")["batches"] if b["id"] == batch_id)


def wait_batch(client, batch_id, pred, timeout=900.0) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        view = batch_view(client, batch_id)
        if pred(view):
            return view
        time.sleep(0.2)
    states = [(it["file"], it["job"]["id"], it["job"]["state"], it["job"]["step"], it["job"].get("error"))
              for it in view["items"]]
    raise AssertionError(f"batch {batch_id} did not get there in {timeout} s: {view['state']}, {states}, "
                         f"unfinished {view['unfinished']}")


def item(view, file) -> dict:
    return next(it for it in view["items"] if it["file"] == file)


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_checkpoint):
    base = make_base_dir(tmp_path_factory.mktemp("batch_base"), checkpoint=tiny_checkpoint)
    make_folder(base / "input" / "shoes", ["a.png", "b.png", "c.png", "d.png"])
    (base / "input" / "shoes" / "b.txt").write_text("a red sneaker\n")
    (base / "input" / "shoes" / "notes.md").write_text("not an image")
    make_folder(base / "input" / "two", ["x.png", "y.png"])
    # a pair named like image a's is already there: a's job must take another name, never overwrite it
    taken = base / "models" / "loras" / "unziplora"
    taken.mkdir(parents=True)
    (taken / "cat_a_content.safetensors").write_bytes(b"keep me")
    state = {"server": start_server(base)}
    yield state
    state["server"].stop()


@one_host
def test_folder_batch_cancel_one_restart_resume_all(live, tiny_checkpoint):
    server = live["server"]
    client = server.client()
    pid, _events, hist = client.run(folder_graph(tiny_checkpoint.name), timeout=900)
    assert hist["status"]["status_str"] == "success", hist["status"]
    batch_id = hist["outputs"]["5"]["unziplora_batch"][0]
    view = batch_view(client, batch_id)
    assert [it["file"] for it in view["items"]] == ["a.png", "b.png", "c.png", "d.png"], "notes.md is no image"
    names = [it["job"]["info"]["output_name"] for it in view["items"]]
    assert names == ["cat_a_2", "cat_b", "cat_c", "cat_d"], names
    b_info = item(view, "b.png")["job"]["info"]
    assert (b_info["content_prompt"], b_info["style_prompt"]) == ("A sks red sneaker", "a red sneaker in sketch style")
    assert item(view, "a.png")["job"]["info"]["content_prompt"] == "A sks cat"
    positions = sorted(it["position"] for it in view["items"] if it["position"] is not None)
    assert positions[0] in (0, 1) and positions == list(range(positions[0], positions[0] + len(positions))), view

    # cancel image b while it waits: the others go on
    b_job = item(view, "b.png")["job"]["id"]
    status, answer = client.post_json(f"/unziplora/jobs/{b_job}/cancel", {})
    assert status == 200 and answer["state"] in ("cancelled", "cancelling"), answer
    view = wait_batch(client, batch_id, lambda v: item(v, "a.png")["job"]["state"] in FINAL
                      and item(v, "b.png")["job"]["state"] in FINAL)
    assert item(view, "b.png")["job"]["state"] == "cancelled"
    assert item(view, "a.png")["job"]["state"] == "done", item(view, "a.png")["job"].get("error")
    # while c trains: a queue with ETAs (a's speed is measured)
    view = wait_batch(client, batch_id, lambda v: item(v, "c.png")["job"]["step"] >= 3)
    c, d = item(view, "c.png"), item(view, "d.png")
    assert (c["position"], d["position"]) == (0, 1) and d["wait_s"] is not None and view["eta_s"] > 0
    assert c["job"]["checkpoint"], "c has a checkpoint at step 2"

    # restart mid-batch: c (running) and d (queued) come back interrupted; resume all continues b, c and d
    server = live["server"] = server.restart()
    client = server.client()
    view = batch_view(client, batch_id)
    states = {it["file"]: it["job"]["state"] for it in view["items"]}
    assert states == {"a.png": "done", "b.png": "cancelled", "c.png": "interrupted", "d.png": "interrupted"}
    assert sorted(view["unfinished"]) == sorted(item(view, f)["job"]["id"] for f in ("b.png", "c.png", "d.png"))
    old_c = item(view, "c.png")["job"]
    status, answer = client.post_json(f"/unziplora/batches/{batch_id}/resume", {})
    assert status == 200 and answer.get("prompt_id") and len(answer["jobs"]) == 3, answer
    # a second resume all while the first is on its way is refused
    status, body = status_of_post(client, f"/unziplora/batches/{batch_id}/resume")
    assert status == 409, body
    view = wait_batch(client, batch_id, lambda v: v["state"] != "active" and not v["unfinished"]
                      and all(it["job"]["state"] == "done" for it in v["items"]), timeout=900)
    new_c = item(view, "c.png")["job"]
    assert new_c["resumed_from"] == old_c["id"] and new_c["id"] != old_c["id"]
    assert [it["job"]["info"]["output_name"] for it in view["items"]] == ["cat_a_2", "cat_b", "cat_c", "cat_d"]
    loras = server.base_dir / "models" / "loras" / "unziplora"
    assert (loras / "cat_a_content.safetensors").read_bytes() == b"keep me"
    for stem in ("cat_a_2", "cat_b", "cat_c", "cat_d"):  # exactly one pair per image, loadable
        for side in ("content", "style"):
            with safe_open(str(loras / f"{stem}_{side}.safetensors"), "pt") as f:
                assert len(list(f.keys())) > 0
    assert not list(loras.glob("cat_*_3_*")) and not list(loras.glob("cat_b_2*")), "no image was trained twice"
    live["done_view"] = view


def status_of_post(client, path, body=b"{}") -> tuple[int, dict]:
    req = urllib.request.Request(client.url + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@one_host
def test_job_files_route_serves_the_jobs_own_files_only(live):
    client = live["server"].client()
    view = live["done_view"]
    job = item(view, "b.png")["job"]
    listing = get(client, f"/unziplora/jobs/{job['id']}/files")
    kinds = {f["kind"]: f for f in listing["files"]}
    assert set(kinds) == {"content", "style", "bundle"}, listing
    loras = live["server"].base_dir / "models" / "loras" / "unziplora"
    status, data = status_of(client, kinds["content"]["url"])
    assert status == 200 and data == (loras / "cat_b_content.safetensors").read_bytes()
    status, data = status_of(client, f"/api/unziplora/jobs/{job['id']}/files/bundle")
    assert status == 200 and data == (live["server"].base_dir / "models" / "unziplora" / "cat_b.safetensors").read_bytes()
    # hostile ids and names: never a file outside the job's own
    jid = job["id"]
    for path, want in [(f"/unziplora/jobs/{jid}/files/..%2F..%2Fuser%2Funziplora%2Fjobs.json", 400),
                       (f"/unziplora/jobs/{jid}/files/checkpoint", 400),
                       (f"/unziplora/jobs/{jid}/files/previews/..%2F..%2F..%2Fuser%2Funziplora%2Fjobs.json", 400),
                       (f"/unziplora/jobs/{jid}/files/previews/step_000002_content.png", 404),
                       ("/unziplora/jobs/..%2F..%2Fetc/files/content", 400),
                       ("/unziplora/jobs/ABCDEF012345/files", 400),
                       ("/unziplora/jobs/000000000000/files/content", 404)]:
        status, body = status_of(client, path)
        if status == 404 and want == 400:  # the server normalised the path away: nothing served either way
            continue
        assert status == want, (path, status, body[:200])
        assert b"jobs" not in body or b"error" in body
    # a job that is not done serves nothing
    cancelled = [j for j in get(client, "/unziplora/jobs")["jobs"] if j["state"] == "cancelled"]
    status, body = status_of(client, f"/unziplora/jobs/{cancelled[0]['id']}/files/content")
    assert status == 409 and b"cancelled" in body


@one_host
def test_cancel_all(live, tiny_checkpoint):
    client = live["server"].client()
    _pid, _ev, hist = client.run(folder_graph(tiny_checkpoint.name, folder="two", name="two", steps=40), timeout=400)
    batch_id = hist["outputs"]["5"]["unziplora_batch"][0]
    status, answer = client.post_json(f"/unziplora/batches/{batch_id}/cancel", {})
    assert status == 200 and len(answer["cancelled"]) == 2, answer
    view = wait_batch(client, batch_id, lambda v: all(it["job"]["state"] in FINAL for it in v["items"]))
    assert {it["job"]["state"] for it in view["items"]} == {"cancelled"} and view["state"] == "stopped"
    for path in ("/unziplora/batches/zzz/cancel", "/unziplora/batches/000000000000/cancel"):
        status, body = status_of_post(client, path)
        assert status in (400, 404) and "batch" in body["error"]


def test_bad_folders_are_refused_naming_them(comfy_server, tiny_checkpoint):
    """Every host (the session's server: nothing here trains or restarts)."""
    client = comfy_server.client()
    bad = f"bad_{uuid.uuid4().hex[:8]}"
    make_folder(comfy_server.base_dir / "input" / bad, ["ok.png"])
    (comfy_server.base_dir / "input" / bad / "broken.png").write_bytes(b"not a png")
    # a broken image fails the node naming the file, and no job of that batch starts
    before = len(get(client, "/unziplora/jobs")["jobs"])
    _pid, _ev, hist = client.run(folder_graph(tiny_checkpoint.name, folder=bad, name="bad"), timeout=400)
    status = hist["status"]
    text = json.dumps(status["messages"])
    assert status["status_str"] == "error" and f"{bad}/broken.png" in text, text[:1500]
    assert len(get(client, "/unziplora/jobs")["jobs"]) == before
    for folder in ("../input", "shoes/../../user"):
        status, body = status_of_post(client, "/prompt", json.dumps({"prompt": folder_graph(
            tiny_checkpoint.name, folder=folder)}).encode())
        if status == 200:  # 0.3.75 does not check V3 combos at queue time: the node refuses it
            end = time.time() + 60
            while not client.history(body["prompt_id"]) and time.time() < end:
                time.sleep(0.3)
            msg = json.dumps(client.history(body["prompt_id"])["status"]["messages"])
            assert "folder" in msg and "not allowed" in msg, msg[:800]
        else:
            assert "folder" in json.dumps(body), body
