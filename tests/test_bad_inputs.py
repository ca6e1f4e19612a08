"""Bad input, as a hostile or careless client sends it, against the pack's routes and nodes (no live ComfyUI).

The routes run in a real aiohttp server (one per module, on a free port, in a thread); the nodes' execute() is
called directly. Each case asserts the answer names what was wrong, that nothing was created or half-written,
and (routes) that the server still answers afterwards. Live /prompt cases: tests/test_bad_inputs_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import urllib.error
import urllib.request
import uuid

import pytest
from aiohttp import web

from unziplora_pack.nodes import routes
from unziplora_pack.training.jobs import JobManager
from unziplora_pack.training.paths import PathDisplay



# ---------------------------------------------------------------------------------------------- route harness


class FakeQueue:
    def __init__(self):
        self.queued = []

    def get_current_queue_volatile(self):
        return [], [(i, pid, {}, {}, []) for i, pid in enumerate(self.queued)]


class FakeServer:
    """What resume_job needs from PromptServer: where /prompt is and what is queued."""

    def __init__(self, port):
        self.address, self.port = "127.0.0.1", port
        self.prompt_queue = FakeQueue()
        self.posted = []


@contextlib.contextmanager
def routes_in_a_thread(add_routes, prompt_delay: float):
    """An aiohttp server on its own loop in a background thread: the handlers add_routes(app) registers, plus a
    stand-in /prompt that takes prompt_delay seconds (a slow /prompt widens the window two concurrent resumes would
    race in). Yields a state dict: port, server (the FakeServer whose queue the stand-in fills)."""
    state = {}

    async def fake_prompt(request):
        payload = await request.json()
        await asyncio.sleep(prompt_delay)
        pid = uuid.uuid4().hex
        state["server"].posted.append(payload)
        state["server"].prompt_queue.queued.append(pid)
        return web.json_response({"prompt_id": pid, "number": len(state["server"].posted)})

    app = web.Application(client_max_size=100 * 1024 * 1024)  # ComfyUI's default upload limit: bodies get through
    add_routes(app)
    app.router.add_post("/prompt", fake_prompt)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["port"], state["runner"] = site._server.sockets[0].getsockname()[1], runner
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    state["server"] = FakeServer(state["port"])
    try:
        yield state
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def _job_routes(app):
    # registered as register_routes does (getattr: the same tests run against the routes before the fixes)
    app.router.add_get("/unziplora/jobs", routes.list_jobs)
    app.router.add_get("/unziplora/jobs/{job_id}", routes.get_job)
    app.router.add_post("/unziplora/jobs/{job_id}/cancel", routes.cancel_job)
    app.router.add_post("/unziplora/jobs/{job_id}/resume", getattr(routes, "_json_errors", lambda h: h)(routes.resume_job))
    if hasattr(routes, "delete_checkpoints"):
        app.router.add_delete("/unziplora/jobs/{job_id}/checkpoints", routes.delete_checkpoints)


@pytest.fixture(scope="module")
def app_server():
    """The pack's job handlers plus a stand-in /prompt on one aiohttp server in a background loop."""
    with routes_in_a_thread(_job_routes, prompt_delay=0.2) as state:
        yield state


class FakeService:
    def __init__(self, manager):
        self.manager = manager


@pytest.fixture
def api(app_server, tmp_path, monkeypatch):
    """call(method, path, body) -> (status, parsed JSON or None, raw bytes); the manager is a fresh one."""
    manager = JobManager(str(tmp_path / "user" / "jobs.json"), checkpoint_root=str(tmp_path / "output" / "ckpt"),
                         display=PathDisplay([(str(tmp_path / "output"), "output")]))
    monkeypatch.setattr(routes, "service", lambda: FakeService(manager))
    app_server["server"].posted.clear()
    app_server["server"].prompt_queue.queued.clear()
    monkeypatch.setattr(routes, "prompt_server", lambda: app_server["server"])
    fake_module = type(sys)("server")
    fake_module.PromptServer = type("PromptServer", (), {"instance": app_server["server"]})
    monkeypatch.setitem(sys.modules, "server", fake_module)  # what the routes import inside ComfyUI
    base = f"http://127.0.0.1:{app_server['port']}"

    def call(method, path, body=None, headers=None):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return status, parsed, raw

    call.manager = manager
    call.fake = app_server["server"]
    return call


def finished_job(manager, state="cancelled", checkpoint=True, tmp=None):
    """A job record as a finished run leaves it (with a checkpoint file when asked)."""
    job = manager.submit("cat", lambda ctx: {}, total=10, info={"node_id": "3"},
                         resume_prompt={"3": {"class_type": "UnZipLoRATrain", "inputs": {"resume_from": ""}}})
    manager.wait(job.id, timeout=10)
    job.state = state
    if checkpoint:
        folder = manager.job_folder(job.id)
        os.makedirs(folder, exist_ok=True)
        job.checkpoint = os.path.join(folder, "step_000004.pt")
        with open(job.checkpoint, "wb") as f:
            f.write(b"x" * 100)
    return job


BIG = b"\x00\xff" * (1536 * 1024)  # 3 MB of binary

ROUTE_CASES = [
    # (id, method, path ({job} = a resumable job's id), body, status, words the message must contain)
    ("resume-malformed-json", "POST", "/unziplora/jobs/{job}/resume", b'{"client_id": ', 400, "not JSON"),
    ("resume-json-list", "POST", "/unziplora/jobs/{job}/resume", b"[1, 2]", 400, "JSON object, not a JSON list"),
    ("resume-json-string", "POST", "/unziplora/jobs/{job}/resume", b'"hello"', 400, "JSON object"),
    ("resume-json-null", "POST", "/unziplora/jobs/{job}/resume", b"null", 400, "JSON object"),
    ("resume-megabytes-binary", "POST", "/unziplora/jobs/{job}/resume", BIG, 400, "bytes"),
    ("resume-not-utf8", "POST", "/unziplora/jobs/{job}/resume", b"\xff\xfe\xfa", 400, "not JSON"),
    ("resume-client-id-number", "POST", "/unziplora/jobs/{job}/resume", b'{"client_id": 5}', 400, "client_id"),
    ("resume-client-id-huge", "POST", "/unziplora/jobs/{job}/resume",
     json.dumps({"client_id": "c" * 5000}).encode(), 400, "client_id"),
    ("resume-unknown-field", "POST", "/unziplora/jobs/{job}/resume", b'{"prompt": {}}', 400, "unknown field"),
    ("cancel-malformed-json", "POST", "/unziplora/jobs/{job}/cancel", b"{{{", 400, "not JSON"),
    ("cancel-megabytes-binary", "POST", "/unziplora/jobs/{job}/cancel", BIG, 400, "bytes"),
    ("cancel-finished-job", "POST", "/unziplora/jobs/{job}/cancel", b"{}", 409, "only queued or running"),
    ("get-injected-quote-id", "GET", '/unziplora/jobs/pz",%20"injected":%20"1', None, 400, "not a job id"),
    ("get-apostrophe-id", "GET", "/unziplora/jobs/it's", None, 400, "not a job id"),
    ("get-dotdot-id", "GET", "/unziplora/jobs/..%2F..%2Fetc", None, 400, "not a job id"),
    ("get-uppercase-id", "GET", "/unziplora/jobs/0123456789AB", None, 400, "not a job id"),
    ("get-long-id", "GET", "/unziplora/jobs/" + "a" * 2000, None, 400, "not a job id"),
    ("get-unknown-id", "GET", "/unziplora/jobs/0123456789ab", None, 404, "no job with id 0123456789ab"),
    ("cancel-unknown-id", "POST", "/unziplora/jobs/0123456789ab/cancel", b"{}", 404, "no job"),
    ("resume-unknown-id", "POST", "/unziplora/jobs/0123456789ab/resume", b"{}", 404, "no job"),
    ("resume-bad-id", "POST", "/unziplora/jobs/<script>/resume", b"{}", 400, "not a job id"),
    ("delete-bad-id", "DELETE", "/unziplora/jobs/x'y/checkpoints", None, 400, "not a job id"),
    ("delete-unknown-id", "DELETE", "/unziplora/jobs/0123456789ab/checkpoints", None, 404, "no job"),
    # issue 20: DELETE took any body; SECURITY.md says fields it does not list are 400 (and nothing is deleted)
    ("delete-unknown-field", "DELETE", "/unziplora/jobs/{job}/checkpoints", b'{"keep": true}', 400, "unknown field"),
    ("delete-malformed-json", "DELETE", "/unziplora/jobs/{job}/checkpoints", b"{{{", 400, "not JSON"),
    ("delete-megabytes-binary", "DELETE", "/unziplora/jobs/{job}/checkpoints", BIG, 400, "bytes"),
]


@pytest.mark.parametrize("case", ROUTE_CASES, ids=[c[0] for c in ROUTE_CASES])
def test_routes_answer_bad_requests_with_json_naming_the_problem(api, case):
    _, method, path, body, status, words = case
    job = finished_job(api.manager)
    before = json.dumps([api.manager.public(j) for j in api.manager.list()], sort_keys=True)
    got, parsed, raw = api(method, path.replace("{job}", job.id), body)
    assert got == status, (got, raw[:300])
    assert isinstance(parsed, dict) and set(parsed) <= {"error", "job"}, raw[:300]  # JSON, nothing injected
    assert words in parsed["error"], parsed
    assert not api.fake.posted, "a bad request must not queue anything"
    after = json.dumps([api.manager.public(j) for j in api.manager.list()], sort_keys=True)
    assert after == before, "a bad request changed a job"
    status_after, listed, _ = api("GET", "/unziplora/jobs")
    assert status_after == 200 and [j["id"] for j in listed["jobs"]] == [job.id]


@pytest.mark.parametrize("state", ["done", "running"])
def test_resume_of_a_job_that_cannot_resume_is_409(api, state):
    job = finished_job(api.manager, state=state)
    status, body, _ = api("POST", f"/unziplora/jobs/{job.id}/resume", {})
    assert status == 409 and f"it is {state}" in body["error"], body
    assert not api.fake.posted


def test_resume_is_idempotent_even_when_posted_concurrently(api):
    job = finished_job(api.manager)
    results = []
    threads = [threading.Thread(target=lambda: results.append(api("POST", f"/unziplora/jobs/{job.id}/resume",
                                                                  {"client_id": "c1"})))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 409, 409, 409], [(r[0], r[1]) for r in results]
    assert len(api.fake.posted) == 1, "only one resume may reach /prompt"
    first = next(r[1] for r in results if r[0] == 200)
    refused = [r[1] for r in results if r[0] == 409]
    assert all(r["prompt_id"] == first["prompt_id"] and "already being resumed" in r["error"] for r in refused)
    # the train node learns which job it resumes from the extra data (resume_from is no longer an input)
    assert api.fake.posted[0]["extra_data"]["extra_pnginfo"]["unziplora_resume"] == {"3": job.id}
    assert "resume_from" not in api.fake.posted[0]["prompt"]["3"]["inputs"]
    # once the node has started the continuing job, the answer names it
    follow = api.manager.submit("cat", lambda ctx: {}, resumed_from=job.id)
    api.fake.prompt_queue.queued.clear()
    status, body, _ = api("POST", f"/unziplora/jobs/{job.id}/resume", {})
    assert status == 409 and body["continued_by"] == follow.id and follow.id in body["error"], body
    assert len(api.fake.posted) == 1
    assert api.manager.public(job)["resumable"] is False


def test_a_resume_whose_prompt_vanished_can_be_retried(api):
    job = finished_job(api.manager)
    assert api("POST", f"/unziplora/jobs/{job.id}/resume", {})[0] == 200
    api.fake.prompt_queue.queued.clear()  # failed validation or deleted from the queue: no job continues it
    assert api("POST", f"/unziplora/jobs/{job.id}/resume", {})[0] == 200
    assert len(api.fake.posted) == 2


def test_delete_checkpoints_contract(api, tmp_path):
    """DELETE /unziplora/jobs/{id}/checkpoints: 409 while the job runs, else frees its folder (issue 11's UI)."""
    job = finished_job(api.manager)
    listed = api("GET", f"/unziplora/jobs/{job.id}")[1]
    assert listed["checkpoint"] == f"output/ckpt/{job.id}/step_000004.pt"  # relative: no server layout
    job.state = "running"
    status, body, _ = api("DELETE", f"/unziplora/jobs/{job.id}/checkpoints")
    assert status == 409 and "running" in body["error"] and os.path.isfile(job.checkpoint), body
    job.state = "cancelled"
    status, body, _ = api("DELETE", f"/unziplora/jobs/{job.id}/checkpoints", {})  # an empty object is fine
    assert status == 200 and body["deleted_bytes"] == 100, body
    assert body["job"]["checkpoint"] is None and body["job"]["checkpoint_bytes"] == 0
    assert body["job"]["resumable"] is False
    assert not os.path.exists(api.manager.job_folder(job.id))


def test_route_failures_inside_the_pack_are_json_500(api, monkeypatch):

    def broken():
        raise RuntimeError("/secret/server/path exploded")

    monkeypatch.setattr(api.manager, "list", broken)
    status, body, _ = api("GET", "/unziplora/jobs")
    assert status == 500 and "server log" in body["error"] and "/secret" not in body["error"], body
