"""Checkpoint retention and DELETE ask one question (training/retention.py): does any queued, running or
resumable job need this file? Job manager only, with real files and stand-in work (no torch)."""

from __future__ import annotations

import os
import threading

import pytest

from unziplora_pack.training.jobs import JobCancelled, JobManager, ResumeRefused

PROMPT = {"3": {"class_type": "UnZipLoRATrain", "inputs": {}}}


def work(manager, saves=(2, 4), end="done", gate: threading.Event | None = None, started=None):
    """Stand-in training: reads the checkpoint it resumes from (as torch.load would), saves `saves`, ends `end`."""

    def run(ctx):
        if started is not None:
            started.set()
        if ctx.job.resumed_from is not None:
            with open(ctx.job.checkpoint, "rb") as f:  # FileNotFoundError if a DELETE took it
                f.read()
        if gate is not None:
            assert gate.wait(10)
        folder = manager.job_folder(ctx.job.id)
        os.makedirs(folder, exist_ok=True)
        for step in saves:
            path = os.path.join(folder, f"step_{step:06d}.pt")
            with open(path, "wb") as f:
                f.write(b"c" * (100 + step))
            ctx.set_checkpoint(path)
        if end == "cancel":
            raise JobCancelled()
        if end == "fail":
            raise FloatingPointError("the loss became nan")
        return {}

    return run


def files_on_disk(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def assert_consistent(m, root):
    """Nothing lost: every file a job needs is there. Nothing leaked: every file there is needed."""
    needed = {os.path.abspath(j.checkpoint) for j in m.list() if m.retention.claim(j)}
    assert {p for p in needed if not os.path.isfile(p)} == set(), "a needed checkpoint is gone"
    assert files_on_disk(root) == needed, "a checkpoint nobody needs was left behind"
    for j in m.list():
        assert j.checkpoint_bytes == m.retention.folder_bytes(j.id)


@pytest.fixture
def m(tmp_path):
    return JobManager(str(tmp_path / "jobs.json"), checkpoint_root=str(tmp_path / "ckpt"))


def submit(m, name, run, resumed_from=None):
    return m.submit(name, run, total=10, info={"node_id": "3"}, resume_prompt=PROMPT, resumed_from=resumed_from)


def test_delete_refuses_while_a_resume_is_queued_behind_another_job(m, tmp_path):
    """Issue 20: the resumed job recorded its checkpoint only once it started, so DELETE of the parent answered
    200 and the resume then failed with FileNotFoundError."""
    parent = m.wait(submit(m, "p", work(m, saves=(2,), end="cancel")).id, 10)
    assert parent.state == "cancelled" and os.path.isfile(parent.checkpoint)
    gate, started = threading.Event(), threading.Event()
    blocker = submit(m, "b", work(m, saves=(), gate=gate, started=started))
    assert started.wait(10)
    resume = submit(m, "r", work(m, saves=(4,)), resumed_from=parent.id)
    assert m.get(resume.id).state == "queued"
    with pytest.raises(ResumeRefused, match=f"job {resume.id} is queued and resumes from job {parent.id}'s"):
        m.delete_checkpoints(parent.id)
    with pytest.raises(ResumeRefused, match=f"job {resume.id} is queued"):
        m.delete_checkpoints(resume.id)
    assert os.path.isfile(parent.checkpoint) and resume.checkpoint == parent.checkpoint
    gate.set()
    done = m.wait(resume.id, 10)
    assert done.state == "done", done.error
    assert m.wait(blocker.id, 10).state == "done"
    assert_consistent(m, tmp_path / "ckpt")
    assert files_on_disk(tmp_path / "ckpt") == set()


def test_delete_refuses_while_a_resume_prompt_waits_in_comfys_queue(m, tmp_path):
    parent = m.wait(submit(m, "p", work(m, saves=(2,), end="cancel")).id, 10)
    m.mark_resume_pending(parent.id, "prompt-1")
    waiting = {"prompt-1"}
    m.prompt_waiting = lambda pid: pid in waiting
    with pytest.raises(ResumeRefused, match="is being resumed by prompt prompt-1"):
        m.delete_checkpoints(parent.id)
    waiting.clear()  # the prompt failed validation or was removed from the queue: the user may delete
    assert m.delete_checkpoints(parent.id) == 102
    assert parent.checkpoint is None and not parent.resumable
    assert_consistent(m, tmp_path / "ckpt")


def test_end_state_after_a_mixed_run(m, tmp_path):
    """done, cancelled, resumed, resumed twice, failed, a resume cancelled while queued; a DELETE at each point."""
    root = tmp_path / "ckpt"
    done = m.wait(submit(m, "done", work(m)).id, 10)
    assert done.state == "done" and done.checkpoint is None
    assert m.delete_checkpoints(done.id) == 0
    assert_consistent(m, root)

    cancelled = m.wait(submit(m, "c", work(m, saves=(2,), end="cancel")).id, 10)
    assert cancelled.resumable
    assert_consistent(m, root)

    resumed = m.wait(submit(m, "r1", work(m, saves=(4,), end="cancel"), resumed_from=cancelled.id).id, 10)
    assert resumed.state == "cancelled" and resumed.resumable and not cancelled.resumable
    assert cancelled.checkpoint is None, "the checkpoint it continued from is superseded"
    assert m.delete_checkpoints(cancelled.id) == 0  # nothing left, nothing refused
    assert_consistent(m, root)

    twice = m.wait(submit(m, "r2", work(m, saves=(6,), end="fail"), resumed_from=resumed.id).id, 10)
    assert twice.state == "failed" and twice.resumable and twice.checkpoint.endswith("step_000006.pt")
    assert_consistent(m, root)

    # a third resume queued behind a running job, then cancelled while still queued: it can resume from the
    # failed job's file; DELETE of the failed job must leave it alone, DELETE of the queued-and-cancelled one
    # frees it
    gate, started = threading.Event(), threading.Event()
    blocker = submit(m, "b", work(m, saves=(2,), gate=gate, started=started))
    assert started.wait(10)
    third = submit(m, "r3", work(m), resumed_from=twice.id)
    assert_consistent(m, root)
    for job_id in (twice.id, third.id):
        with pytest.raises(ResumeRefused):
            m.delete_checkpoints(job_id)
    m.cancel(third.id)
    assert third.state == "cancelled" and third.resumable and third.checkpoint == twice.checkpoint
    with pytest.raises(ResumeRefused, match=f"job {third.id} can be resumed from job {twice.id}'s checkpoint"):
        m.delete_checkpoints(twice.id)
    assert_consistent(m, root)
    gate.set()
    assert m.wait(blocker.id, 10).state == "done"
    assert_consistent(m, root)
    assert m.delete_checkpoints(third.id) == 106
    assert not third.resumable and twice.checkpoint is None
    assert_consistent(m, root)
    assert files_on_disk(root) == set()

    # a restart: the manager reads jobs.json again; nothing is deleted and the state is still consistent
    failed = m.wait(submit(m, "f", work(m, saves=(2,), end="fail")).id, 10)
    again = JobManager(m.state_path, checkpoint_root=str(root))
    assert again.get(failed.id).resumable
    assert_consistent(again, root)
    assert again.delete_checkpoints(failed.id) == 102
    assert_consistent(again, root)
