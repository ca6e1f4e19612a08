"""The job manager on its own: states, queueing, cancel, events, persistence and restart."""

from __future__ import annotations

import json
import threading
import time

import pytest

from unziplora_pack.training.jobs import JobCancelled, JobManager


def _steps(n, delay=0.01, gate: threading.Event | None = None):
    def work(ctx):
        for i in range(n):
            if gate is not None:
                gate.wait(5)
            ctx.check_stop()
            time.sleep(delay)
            ctx.progress(i + 1, n, loss=1.0 / (i + 1))
        return {"content": "c.safetensors"}

    return work


def test_job_runs_to_done_with_events_and_persisted_state(tmp_path):
    events = []
    state = tmp_path / "jobs.json"
    m = JobManager(str(state), emit=lambda ev, data: events.append((ev, data)))
    job = m.submit("a", _steps(5), total=5, info={"mode": "unziplora"})
    done = m.wait(job.id, timeout=10)
    assert done.state == "done" and done.step == 5 and done.outputs == {"content": "c.safetensors"}
    assert done.losses[-1] == pytest.approx(0.2) and done.it_per_s > 0
    kinds = [d["kind"] for _, d in events]
    assert all(ev == "unziplora.progress" for ev, _ in events)
    assert kinds[0] == "state" and kinds[-1] == "state" and "progress" in kinds
    assert events[-1][1]["job"]["state"] == "done"
    saved = json.loads(state.read_text())
    assert saved["jobs"][0]["state"] == "done"


def test_jobs_run_one_at_a_time_in_order(tmp_path):
    m = JobManager(str(tmp_path / "jobs.json"))
    gate = threading.Event()
    first = m.submit("first", _steps(3, gate=gate), total=3)
    second = m.submit("second", _steps(3), total=3)
    time.sleep(0.2)
    assert m.get(first.id).state == "running" and m.get(second.id).state == "queued"
    gate.set()
    m.wait(second.id, timeout=10)
    assert m.get(first.id).finished <= m.get(second.id).started


def test_cancel_running_and_queued(tmp_path):
    m = JobManager(str(tmp_path / "jobs.json"))
    gate = threading.Event()
    running = m.submit("r", _steps(1000, gate=gate), total=1000)
    queued = m.submit("q", _steps(3), total=3)
    time.sleep(0.1)
    assert m.cancel(queued.id).state == "cancelled"
    assert m.cancel(running.id).state == "cancelling"
    gate.set()
    assert m.wait(running.id, timeout=10).state == "cancelled"
    assert m.get(running.id).step < 1000
    time.sleep(0.2)
    assert m.get(queued.id).state == "cancelled" and m.get(queued.id).started is None


def test_failure_keeps_the_reason(tmp_path):
    m = JobManager(str(tmp_path / "jobs.json"))

    def boom(ctx):
        raise ValueError("image is 10x10 px")

    job = m.wait(m.submit("f", boom).id, timeout=10)
    assert job.state == "failed" and job.error == "ValueError: image is 10x10 px"


def test_restart_marks_active_jobs_interrupted_and_resumable(tmp_path):
    state = tmp_path / "jobs.json"
    m = JobManager(str(state))
    gate = threading.Event()
    job = m.submit("r", _steps(100, gate=gate), total=100, info={"node_id": "7"},
                   resume_prompt={"7": {"class_type": "UnZipLoRATrain", "inputs": {}}})
    time.sleep(0.1)
    m.context(job.id).set_checkpoint("/tmp/ckpt/step_000010.pt")
    # a new process reads the same file: the job it had is no longer running anywhere
    m2 = JobManager(str(state))
    again = m2.get(job.id)
    assert again.state == "interrupted" and again.resumable
    assert "stopped" in again.error
    assert again.public()["resumable"] is True and "resume_prompt" not in again.public()
    gate.set()


def test_job_cancelled_exception_is_a_cancel_not_a_failure(tmp_path):
    m = JobManager(None)

    def work(ctx):
        raise JobCancelled()

    assert m.wait(m.submit("c", work).id, timeout=5).state == "cancelled"


def test_resume_keeps_the_loss_curve_up_to_the_checkpoint(tmp_path):
    """Issue 21.7: a resumed job starts with the losses of the steps its checkpoint holds (the parent ran two
    steps past it before it stopped), so the panel's plot goes on instead of starting at the checkpoint."""
    m = JobManager(str(tmp_path / "jobs.json"), checkpoint_root=str(tmp_path / "ck"))

    def work(ctx):
        for s in range(1, 7):
            ctx.progress(s, 10, loss=s / 10)
            if s == 4:
                path = tmp_path / "ck" / ctx.job.id / "step_000004.pt"
                path.parent.mkdir(parents=True)
                path.write_bytes(b"state")
                ctx.set_checkpoint(str(path))
        raise JobCancelled()

    parent = m.wait(m.submit("a", work, total=10).id)
    assert parent.state == "cancelled" and parent.losses == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    child = m.submit("a", lambda ctx: {}, total=10, resumed_from=parent.id, step=4)
    assert child.losses == [0.1, 0.2, 0.3, 0.4] and child.step == 4
    assert child.info["resumed_at_step"] == 4
    m.wait(child.id)
