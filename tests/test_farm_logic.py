"""The farm's scheduling and fault handling on a local Ray, against fake workers (tests/fake_worker.py): a worker
killed for good (its image goes to another worker), a worker killed and back within the grace period (its job is
resumed), a worker refusing the graph, the manifest, a re-run, and a killed dispatcher's leftovers. Seconds, no
ComfyUI: the live two-worker run is tests/test_farm.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from fake_worker import FakeWorker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    import sys

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [str(REPO / "farm")]})
    from farm import run

    yield run
    ray.shutdown()


def workflow(ckpt="tiny.safetensors") -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
            "3": {"class_type": "UnZipLoRATrain", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                              "image": ["2", 0], "content_prompt": "A sks cat",
                                                              "style_prompt": "A cat in sketch style",
                                                              "combined_prompt": "", "name": "shop",
                                                              "run_mode": "background"}}}


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for stem in ("boot", "cap", "mug", "vase"):
        (folder / f"{stem}.png").write_bytes(b"png")
    (folder / "mug.txt").write_text("a blue mug")
    return folder


def kill_when_running(worker: FakeWorker, then=None, min_step: int = 3):
    def watch():
        end = time.time() + 30
        while time.time() < end:
            if any(j["state"] == "running" and j["step"] >= min_step for j in list(worker.state["jobs"].values())):
                worker.stop()
                if then:
                    then()
                return
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir())


def test_worker_lost_for_good_its_image_goes_to_the_other(local_ray, images, tmp_path):
    a, b = FakeWorker(train_s=1.5), FakeWorker(train_s=0.5)
    watcher = kill_when_running(a)
    out = tmp_path / "out"
    manifest = local_ray.dispatch(str(images), workflow(), [a.url, b.url], str(out), grace_s=1.0, poll_s=0.1)
    watcher.join(1)
    entries = manifest.entries
    assert sorted(entries) == ["boot.png", "cap.png", "mug.png", "vase.png"]
    assert all(e["status"] == "done" for e in entries.values()), entries
    assert folders(out) == ["shop_boot", "shop_cap", "shop_mug", "shop_vase"]  # no .partial left, one each
    lost = [e for e in entries.values() if e["attempts"][0]["outcome"] == "worker lost"]
    assert len(lost) == 1 and lost[0]["worker"] == b.url and lost[0]["attempts"][1]["worker"] == b.url
    for e in entries.values():
        d = out / e["files"]["content"].split("/")[0]
        assert sorted(os.listdir(d)) == sorted(["pair.json", "previews", f"{e['name']}_content.safetensors",
                                                f"{e['name']}_style.safetensors", f"{e['name']}_bundle.safetensors"])
        assert (out / e["files"]["content"]).read_bytes() == f"{e['job']}:content".encode()
    assert b.state["jobs"][entries["mug.png"]["job"]]["info"]["content_prompt"] == "A sks blue mug"
    on_json = json.loads((out / "manifest.json").read_text())["images"]
    assert on_json == json.loads(json.dumps(entries))
    csv_lines = (out / "manifest.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[1].startswith("boot.png,done,")

    # a re-run trains nothing
    before = len(b.state["jobs"])
    local_ray.dispatch(str(images), workflow(), [b.url], str(out), grace_s=1.0, poll_s=0.1)
    assert len(b.state["jobs"]) == before and json.loads((out / "manifest.json").read_text())["images"] == on_json
    b.stop()


def test_worker_back_within_grace_resumes_its_job(local_ray, images, tmp_path):
    a = FakeWorker(train_s=1.5)
    port, state = a.port, a.state
    revived = {}

    def restart():
        time.sleep(0.5)
        revived["worker"] = FakeWorker(port=port, state=state, train_s=1.0)

    watcher = kill_when_running(a, then=restart)
    out = tmp_path / "out"
    manifest = local_ray.dispatch(str(images), workflow(), [a.url], str(out), grace_s=20.0, poll_s=0.1)
    watcher.join(1)
    entries = manifest.entries
    assert all(e["status"] == "done" and e["worker"] == a.url for e in entries.values()), entries
    resumed = [e for e in entries.values() if "resumed 1x" in e["attempts"][-1]["outcome"]]
    assert len(resumed) == 1, entries
    job = state["jobs"][resumed[0]["job"]]
    assert job["resumed_from"] and state["jobs"][job["resumed_from"]]["state"] == "interrupted"
    assert folders(out) == ["shop_boot", "shop_cap", "shop_mug", "shop_vase"]
    revived["worker"].stop()


def test_refused_graph_fails_the_image_with_the_workers_message(local_ray, images, tmp_path):
    b = FakeWorker(train_s=0.2)
    out = tmp_path / "out"
    manifest = local_ray.dispatch(str(images), workflow("missing.safetensors"), [b.url], str(out), grace_s=1.0)
    for e in manifest.entries.values():
        assert e["status"] == "failed" and "ckpt_name: 'missing.safetensors' not in" in e["error"], e
    assert folders(out) == []
    # the next run, with the model there, trains them all (failed images are not skipped)
    manifest = local_ray.dispatch(str(images), workflow(), [b.url], str(out), grace_s=1.0, poll_s=0.1)
    assert all(e["status"] == "done" for e in manifest.entries.values())
    b.stop()


def test_a_killed_dispatchers_leftovers(local_ray, tmp_path):
    from farm.manifest import PARTIAL, Manifest

    out = tmp_path / "out"
    (out / PARTIAL / "cap-1234").mkdir(parents=True)  # half downloaded: dropped
    (out / PARTIAL / "cap-1234" / "x_content.safetensors").write_bytes(b"half")
    done = out / "shop_boot"  # renamed into place, but the manifest line was never written: adopted
    done.mkdir()
    (done / "pair.json").write_text(json.dumps({"image": "boot.png", "status": "done", "job": "a" * 12,
                                                "files": {"content": "shop_boot/c"}}))
    m = Manifest(str(out))
    assert m.done("boot.png") and not m.done("cap.png")
    assert not (out / PARTIAL).exists()
    assert json.loads((out / "manifest.json").read_text())["images"]["boot.png"]["job"] == "a" * 12
