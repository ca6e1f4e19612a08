"""A batch job's own Resume and its batch's "resume all" share one lock (nodes/routes.py resume_lock).

Before: the batch route had its own lock, so the two POSTed at once each found nothing pending and both queued
the same image again: two jobs for one image of the batch (issue 22: every image ends with exactly one pair)."""

from __future__ import annotations

import sys
import threading

import pytest

from test_bad_inputs import FakeService, finished_job, routes_in_a_thread
from unziplora_pack.nodes import batch_routes, routes
from unziplora_pack.training.jobs import JobManager
from unziplora_pack.training.paths import PathDisplay


def _resume_routes(app):
    app.router.add_post("/unziplora/jobs/{job_id}/resume", routes._json_errors(routes.resume_job))
    app.router.add_post("/unziplora/batches/{batch_id}/resume", routes._json_errors(batch_routes.resume_batch))


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The job and batch resume routes plus a slow stand-in /prompt, on one aiohttp server in a thread."""
    with routes_in_a_thread(_resume_routes, prompt_delay=0.3) as state:  # the window two resumes race in
        manager = JobManager(str(tmp_path / "user" / "jobs.json"), checkpoint_root=str(tmp_path / "output" / "ckpt"),
                             display=PathDisplay([(str(tmp_path / "output"), "output")]))
        for module in (routes, batch_routes):
            monkeypatch.setattr(module, "service", lambda: FakeService(manager))
        monkeypatch.setattr(routes, "prompt_server", lambda: state["server"])
        fake_module = type(sys)("server")
        fake_module.PromptServer = type("PromptServer", (), {"instance": state["server"]})
        monkeypatch.setitem(sys.modules, "server", fake_module)
        monkeypatch.setattr(routes, "_resume_lock", None)  # a fresh lock on this test's loop
        state["manager"] = manager
        yield state


def post(port, path):
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_jobs_resume_and_its_batchs_resume_all_posted_at_once_queue_one_prompt(served):
    manager = served["manager"]
    job = finished_job(manager, state="interrupted")
    batch_id = "0123456789ab"
    job.info["batch"] = {"id": batch_id, "index": 0, "count": 1, "file": "a.png", "folder": "shots"}
    results = []
    paths = [f"/unziplora/jobs/{job.id}/resume", f"/unziplora/batches/{batch_id}/resume"]
    threads = [threading.Thread(target=lambda p=p: results.append(post(served["port"], p))) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(status for status, _ in results) == [200, 409], results
    assert len(served["server"].posted) == 1, "the image was queued to train again twice"
    refused = next(body for status, body in results if status == 409)
    assert "already being resumed" in refused["error"], refused


def test_without_a_prompt_server_both_resume_routes_answer_503_in_json(served, monkeypatch):
    """The refusal is the routes' JSON error like every other (one format, nodes/routes.py _json_errors), and
    nothing is queued or marked."""
    from unziplora_pack.nodes import routes

    manager = served["manager"]
    job = finished_job(manager, state="interrupted")
    batch_id = "0123456789ab"
    job.info["batch"] = {"id": batch_id, "index": 0, "count": 1, "file": "a.png", "folder": "shots"}
    monkeypatch.setattr(routes, "prompt_server", lambda: None)
    for path in (f"/unziplora/jobs/{job.id}/resume", f"/unziplora/batches/{batch_id}/resume"):
        status, body = post(served["port"], path)
        assert (status, body) == (503, {"error": "ComfyUI's prompt server is not running"}), (path, status, body)
    assert served["server"].posted == []
