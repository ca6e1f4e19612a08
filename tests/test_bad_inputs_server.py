"""Bad input and faults through a real ComfyUI: /prompt with values the V3 combos do not check, resume twice and
concurrently, the base model unloaded by the queue mid-job, SIGTERM mid-job, a damaged jobs.json at start.

One server for the module (it is stopped with SIGTERM and restarted near the end, so it is not the session's).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from comfy_server import PromptRejected, events_of, make_base_dir, start_server
from test_train_server import _sample_image, job_id_of, train_graph, wait_job

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_checkpoint):
    base = make_base_dir(tmp_path_factory.mktemp("bad_inputs_base"), checkpoint=tiny_checkpoint)
    _sample_image(base / "input" / "cat.png", 160)
    (base / "models" / "loras" / "broken.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    (base / "models" / "loras" / "other.safetensors").write_bytes(b"not a lora")
    state = {"server": start_server(base), "base": base, "ckpt": tiny_checkpoint.name}
    yield state
    state["server"].stop()


def pair_graph(mergers="none", content="broken.safetensors", style="other.safetensors") -> dict:
    return {"1": {"class_type": "UnZipLoRALoadFiles", "inputs": {"content_lora": content, "style_lora": style,
                                                                  "mergers": mergers}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def error_of(client, graph) -> tuple[str, str]:
    """("rejected", body) when /prompt refused it, ("failed", message) when it failed while running. `graph` may be
    (graph, extra_data)."""
    graph, extra = graph if isinstance(graph, tuple) else (graph, None)
    with client.follow() as events:
        try:
            pid = client.queue(graph, extra_data=extra)
        except PromptRejected as e:
            return "rejected", json.dumps(e.body)
        seen = events.until_done(pid, timeout=400)
    errors = events_of(seen, "execution_error", pid)
    assert errors, f"{graph} did not fail"
    return "failed", errors[0]["exception_message"]


@pytest.mark.parametrize("graph, words", [
    (lambda ckpt: train_graph(ckpt, run_mode="bogus"), "run_mode = 'bogus' is not allowed: one of background, blocking"),
    (lambda ckpt: train_graph(ckpt, name="CON"), "CON is a reserved device name on Windows"),
    (lambda ckpt: train_graph(ckpt, selections=20), "selections = 20 is not allowed"),
    (lambda ckpt: train_graph(ckpt, style_prompt="A sks cat"), "content_prompt and style_prompt are the same text"),
    (lambda ckpt: (train_graph(ckpt), {"extra_pnginfo": {"unziplora_resume": {"3": "0123456789ab"}}}),
     "Resume of job '0123456789ab': no job"),
    (lambda ckpt: pair_graph(mergers="bogus"), "mergers = 'bogus' is not allowed: one of auto, none"),
    (lambda ckpt: pair_graph(), "content_lora = 'broken.safetensors': broken.safetensors: the file is cut short"),
    (lambda ckpt: pair_graph(content="other.safetensors", style="broken.safetensors"), "content_lora = 'other"),
], ids=["run_mode", "name-CON", "selections", "same-prompts", "resume-unknown-job", "mergers", "truncated", "not-a-lora"])
def test_prompt_path_refuses_bad_values_naming_the_input(live, graph, words):
    client = live["server"].client()
    before = client.get_json("/unziplora/jobs")["jobs"]
    kind, message = error_of(client, graph(live["ckpt"]))
    if kind == "rejected" and " = " in words:  # a ComfyUI that checks V3 combos itself refuses it first
        assert words.split(" = ")[0] in message, message
    else:
        assert words in message, message
    assert str(live["base"]) not in message, "the message shows the server's folders"
    assert client.get_json("/unziplora/jobs")["jobs"] == before, "a refused prompt started a job"


# First host only (conftest.py's rule): three resumes at once, one job, the superseded checkpoints tidied are the
# pack's route lock and retention; the ComfyUI surface a resume uses (the prompt the server queues itself) is
# tested on every host by test_train_server::test_cancel_then_resume_matches_uninterrupted.
@pytest.mark.first_host_only
def test_resume_twice_and_concurrently_starts_one_job(live):
    client = live["server"].client()
    with client.follow() as events:
        pid = client.queue(train_graph(live["ckpt"], name="twice", steps=8, checkpoint_every=2))
        events.until_done(pid, timeout=400)
    job_id = job_id_of(client.history(pid))
    wait_job(client, job_id, min_step=3, timeout=400)
    client.post_json(f"/unziplora/jobs/{job_id}/cancel", {})
    job = wait_job(client, job_id, timeout=400)
    assert job["state"] == "cancelled" and job["resumable"] and job["checkpoint_bytes"] > 0, job

    results = []
    posts = [threading.Thread(target=lambda: results.append(client.post_json(f"/unziplora/jobs/{job_id}/resume", {})))
             for _ in range(3)]
    for t in posts:
        t.start()
    for t in posts:
        t.join(60)
    assert sorted(r[0] for r in results) == [200, 409, 409], results
    rpid = next(r[1]["prompt_id"] for r in results if r[0] == 200)
    end = time.time() + 400
    while client.history(rpid).get("status", {}).get("completed") is not True and time.time() < end:
        time.sleep(0.2)
    new_id = job_id_of(client.history(rpid))
    status, body = client.post_json(f"/unziplora/jobs/{job_id}/resume", {})
    assert status == 409 and body["continued_by"] == new_id, body
    done = wait_job(client, new_id, timeout=400)
    assert done["state"] == "done" and done["resumed_from"] == job_id, done
    jobs = client.get_json("/unziplora/jobs")["jobs"]
    assert [j["id"] for j in jobs if j.get("resumed_from") == job_id] == [new_id], "a second job was started"
    original = next(j for j in jobs if j["id"] == job_id)
    assert not original["resumable"] and original["checkpoint_bytes"] == 0, "superseded checkpoints stay behind"
    assert not (live["base"] / "output" / "unziplora" / "checkpoints" / job_id).exists()
    assert not any(p.suffix == ".tmp" for p in (live["base"] / "models").rglob("*"))


def test_sigterm_mid_job_then_a_damaged_jobs_json(live):
    """Last in the module: stops the server (SIGTERM) and restarts it."""
    server, client = live["server"], live["server"].client()
    with client.follow() as events:
        pid = client.queue(train_graph(live["ckpt"], name="term", steps=12, checkpoint_every=0))
        events.until_done(pid, timeout=400)
    job_id = job_id_of(client.history(pid))
    first = wait_job(client, job_id, min_step=1, timeout=400)["step"]
    # the queue unloads every model while the job trains on its private copy: the job goes on
    assert client.request("POST", "/free", {"unload_models": True, "free_memory": True})[0] == 200
    error_of(client, pair_graph())  # any prompt that runs (a refused one does not): the flags apply after it
    step = wait_job(client, job_id, min_step=first + 1, timeout=400)["step"]
    assert client.get_json(f"/unziplora/jobs/{job_id}")["state"] == "running"
    server.stop(timeout=60)
    assert "stopped job(s) " + job_id in server.log(), server.log_tail(30)
    state_file = live["base"] / "user" / "unziplora" / "jobs.json"
    saved = json.loads(state_file.read_text())
    job = next(j for j in saved["jobs"] if j["id"] == job_id)
    assert job["state"] == "interrupted" and "shut down" in job["error"], job
    assert job["checkpoint"] and int(job["checkpoint"][-9:-3]) >= step, (job["checkpoint"], step)

    saved["jobs"] += ["a string", {"id": "../../x", "state": "done", "name": "x"}]
    state_file.write_text(json.dumps(saved))
    live["server"] = server = server.restart()
    client = server.client()
    listing = client.get_json("/unziplora/jobs")
    assert any("skipped 2 of" in w for w in listing["warnings"]), listing["warnings"]
    again = next(j for j in listing["jobs"] if j["id"] == job_id)
    assert again["state"] == "interrupted" and again["resumable"], again
    assert "skipped 2 of" in server.log()  # said at start-up, in the log
