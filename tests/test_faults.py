"""Faults during a job, on the tiny in-process model through the real TrainingService and Trainer: cancel during
a checkpoint write, a NaN loss, an out-of-memory step, a full or read-only disk (checkpoint and final files),
the base model changed by the queue, a shutdown mid-job, a damaged or unwritable jobs.json. Each asserts the
message (which step, what is kept), that no half-written file is left, and that the next job still runs."""

from __future__ import annotations

import copy
import errno
import gc
import json
import logging
import os
import threading
import weakref

import pytest
import torch

from tiny_models import tiny_training_parts
from unziplora_pack.training import jobs as jobs_mod
from unziplora_pack.training import loop as loop_mod
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.jobs import JobManager, ResumeRefused
from unziplora_pack.training.loop import Trainer, TrainInputs
from unziplora_pack.training.model_copy import private_unet_copy
from unziplora_pack.training.paths import PathDisplay
from unziplora_pack.training.retention import CheckpointRetention
from unziplora_pack.training.service import OutputDirs, TrainingService
from unziplora_pack.unziplora import lora_files

CFG = TrainConfig(steps=5, rank=4, resolution=64, sample_times=2, checkpoint_every=2, seed=3)  # checkpoints at 2, 4
NEXT = TrainConfig(steps=2, rank=4, resolution=64, sample_times=1, checkpoint_every=0, seed=3)  # "the next job runs"
PROMPT = {"3": {"class_type": "UnZipLoRATrain", "inputs": {}}}


@pytest.fixture(scope="module")
def base_inputs():
    from tiny_models import build_tiny_sdxl

    patcher = build_tiny_sdxl(seed=0)
    unet, fp = private_unet_copy(patcher)
    parts = tiny_training_parts(patcher)
    return dict(patcher=patcher, unet=unet, fp=fp, streams=parts["streams"], post=parts["posteriors"],
                adm=parts["adm"])


def make_inputs(base):
    return TrainInputs(unet=copy.deepcopy(base["unet"]), streams=base["streams"], posteriors=base["post"],
                       adm=base["adm"], base_fingerprint=base["fp"],
                       info={"prompt": "A sks cat in sketch style", "content_prompt": "A sks cat",
                             "style_prompt": "A cat in sketch style"})


@pytest.fixture
def svc(tmp_path):
    dirs = OutputDirs(loras=str(tmp_path / "models" / "loras" / "unziplora"), bundles=str(tmp_path / "models" / "unziplora"),
                      checkpoints=str(tmp_path / "output" / "unziplora" / "checkpoints"))
    display = PathDisplay([(str(tmp_path / "models"), "models"), (str(tmp_path / "output"), "output")])
    manager = JobManager(str(tmp_path / "user" / "unziplora" / "jobs.json"), display=display)
    return TrainingService(manager, dirs, device=torch.device("cpu"))


def start(svc, base, cfg=CFG, name="cat", **kw):
    return svc.start(make_inputs(base), cfg, name, resume_prompt=PROMPT, node_id="3", **kw)


def folder_files(svc, job_id):
    folder = os.path.join(svc.dirs.checkpoints, job_id)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def loadable_step(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["lora"].values() if v.is_floating_point())
    return state["step"]


def test_retention_keeps_only_what_resume_needs(svc, base_inputs, monkeypatch):
    seen = []
    real = CheckpointRetention.after_checkpoint

    def spy(self, job, previous):
        real(self, job, previous)
        seen.append(folder_files(svc, job.id))

    monkeypatch.setattr(CheckpointRetention, "after_checkpoint", spy)
    done = svc.manager.wait(start(svc, base_inputs).id, 240)
    assert done.state == "done", done.error
    assert seen == [["step_000002.pt"], ["step_000004.pt"]], "only the newest checkpoint is kept while running"
    assert folder_files(svc, done.id) == [] and done.checkpoint is None and done.checkpoint_bytes == 0
    public = svc.manager.public(done)
    assert public["outputs"]["content"] == "models/loras/unziplora/cat_content.safetensors", public["outputs"]

    monkeypatch.setenv("UNZIPLORA_KEEP_CHECKPOINTS", "1")
    kept = svc.manager.wait(start(svc, base_inputs).id, 240)
    assert kept.state == "done" and folder_files(svc, kept.id) == ["step_000002.pt", "step_000004.pt"]
    assert kept.checkpoint_bytes == sum(os.path.getsize(os.path.join(svc.dirs.checkpoints, kept.id, f))
                                        for f in folder_files(svc, kept.id))


def test_cancel_during_a_checkpoint_write(svc, base_inputs, monkeypatch):
    writing, release = threading.Event(), threading.Event()
    real_save = torch.save

    def slow_save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        writing.set()
        assert release.wait(60)

    monkeypatch.setattr(loop_mod.torch, "save", slow_save)
    job = start(svc, base_inputs)
    assert writing.wait(240), "no checkpoint write started"
    assert svc.manager.cancel(job.id).state == "cancelling"  # while the file is being written
    release.set()
    end = svc.manager.wait(job.id, 120)
    assert end.state == "cancelled", end.error
    assert folder_files(svc, job.id) == ["step_000002.pt"], "one whole checkpoint, no temp"
    assert loadable_step(end.checkpoint) == 2 and end.resumable


def _failing_save(when, error, monkeypatch):
    calls = {"n": 0}
    real_save = torch.save

    def save(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == when:
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")  # what a full disk leaves behind
            raise error
        real_save(obj, path, *a, **k)

    monkeypatch.setattr(loop_mod.torch, "save", save)


def test_disk_full_while_saving_a_checkpoint(svc, base_inputs, monkeypatch):
    _failing_save(2, OSError(errno.ENOSPC, "No space left on device"), monkeypatch)
    job = svc.manager.wait(start(svc, base_inputs).id, 240)
    assert job.state == "failed"
    assert "could not save the checkpoint of step 4: No space left on device" in job.error, job.error
    assert "the last good checkpoint (step 2) is kept" in job.error, job.error
    assert folder_files(svc, job.id) == ["step_000002.pt"] and loadable_step(job.checkpoint) == 2
    assert job.resumable
    assert svc.manager.wait(start(svc, base_inputs, NEXT, name="next").id, 240).state == "done", "the next job must run"


@pytest.mark.parametrize("error, words", [
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 0 vs 3"), "unexpected pos"),
])
def test_a_failed_checkpoint_write_leaves_no_file(base_inputs, tmp_path, monkeypatch, error, words):
    t = Trainer(make_inputs(base_inputs), CFG, checkpoint_dir=str(tmp_path))
    state = t._setup()
    state.step = 2
    t.save_checkpoint(state)
    _failing_save(1, error, monkeypatch)
    state.step = 4
    with pytest.raises(OSError, match=f"could not save the checkpoint of step 4: .*{words}"):
        t.save_checkpoint(state)
    assert os.listdir(tmp_path) == ["step_000002.pt"] and loadable_step(tmp_path / "step_000002.pt") == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoint_folder(svc, base_inputs):
    os.makedirs(svc.dirs.checkpoints)
    os.chmod(svc.dirs.checkpoints, 0o500)
    try:
        job = svc.manager.wait(start(svc, base_inputs).id, 240)
    finally:
        os.chmod(svc.dirs.checkpoints, 0o700)
    assert job.state == "failed" and "Permission denied" in job.error, job.error


def test_disk_fails_while_writing_the_final_files(svc, base_inputs, monkeypatch, tmp_path):
    earlier = tmp_path / "models" / "loras" / "unziplora" / "cat_content.safetensors"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's file")
    calls = {"n": 0}
    real = lora_files._save_safetensors

    def save(tensors, path, metadata):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(path, "wb") as f:
                f.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path, metadata)

    monkeypatch.setattr(lora_files, "_save_safetensors", save)
    job = svc.manager.wait(start(svc, base_inputs).id, 240)
    assert job.state == "failed"
    assert "could not write the trained files: No space left on device" in job.error, job.error
    assert "Nothing was written; the last good checkpoint (step 4) is kept" in job.error, job.error
    assert all_files(tmp_path / "models") == ["loras/unziplora/cat_content.safetensors"], "no new or temp file"
    assert earlier.read_bytes() == b"an earlier run's file"
    assert job.resumable and str(tmp_path) not in svc.manager.public(job)["error"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(svc, base_inputs, monkeypatch):
    real = Trainer._loss
    calls = {"n": 0}

    def loss(self, *a, **k):
        calls["n"] += 1
        value = real(self, *a, **k)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(Trainer, "_loss", loss)
    job = svc.manager.wait(start(svc, base_inputs).id, 240)
    assert job.state == "failed" and job.error.startswith("FloatingPointError: the loss became nan at step 3")
    assert "Training stopped; the last good checkpoint (step 2) is kept" in job.error, job.error
    assert loadable_step(job.checkpoint) == 2 and job.resumable


def test_a_checkpoint_of_non_finite_weights_is_never_written(base_inputs, tmp_path):
    t = Trainer(make_inputs(base_inputs), CFG, checkpoint_dir=str(tmp_path))
    state = t._setup()
    with torch.no_grad():
        next(iter(state.lora.parameters())).fill_(float("inf"))
    state.step = 2
    with pytest.raises(FloatingPointError, match="no longer finite at step 2: not saved"):
        t.save_checkpoint(state)
    assert os.listdir(tmp_path) == []


def test_out_of_memory_fails_clearly_releases_memory_and_the_next_job_runs(svc, base_inputs, monkeypatch):
    monkeypatch.setattr(logging.getLogger("unziplora"), "propagate", False)  # pytest's handler keeps tracebacks
    real = Trainer._loss
    calls = {"n": 0}

    def loss(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "_loss", loss)
    inputs = make_inputs(base_inputs)
    unet_ref = weakref.ref(inputs.unet)
    job = svc.start(inputs, CFG, "cat", resume_prompt=PROMPT, node_id="3")
    del inputs
    job = svc.manager.wait(job.id, 240)
    assert job.state == "failed" and job.error.startswith("MemoryError: out of memory at step 3 of 5 on cpu"), job.error
    assert "memory was released; the last good checkpoint (step 2) is kept" in job.error
    for _ in range(20):  # the worker drops its reference right after the job's end is recorded
        gc.collect()
        if unet_ref() is None:
            break
        threading.Event().wait(0.05)
    assert unet_ref() is None, "the failed job's UNet copy is still referenced"
    assert svc.manager.wait(start(svc, base_inputs, NEXT, name="next").id, 240).state == "done"


def test_base_model_changed_or_unloaded_by_the_queue_meanwhile(svc, base_inputs, monkeypatch):
    import comfy.model_management as mm

    from unziplora_pack.training import service as service_mod

    patcher = base_inputs["patcher"]  # what the job's copy (base_inputs["unet"]) was made from
    inputs = make_inputs(base_inputs)
    unet = inputs.unet
    snapshot = {k: v.clone() for k, v in unet.state_dict().items()}
    at_release = {}
    real_release = service_mod.release_copy

    def release(copy_):  # the job frees its copy when training ends: look at it just before
        at_release.update({k: v.clone() for k, v in copy_.state_dict().items()})
        real_release(copy_)

    monkeypatch.setattr(service_mod, "release_copy", release)
    job = svc.start(inputs, NEXT, "cat", resume_prompt=PROMPT, node_id="3")
    with torch.no_grad():  # another graph patches or frees the model the job was made from
        for p in patcher.model.parameters():
            p.zero_()
    mm.unload_all_models()
    mm.soft_empty_cache()
    done = svc.manager.wait(job.id, 240)
    assert done.state == "done", done.error
    assert at_release.keys() == snapshot.keys()
    assert all(torch.equal(snapshot[k], v) for k, v in at_release.items()), "the job's copy changed"


def test_shutdown_mid_job_saves_a_checkpoint_and_marks_it_interrupted(svc, base_inputs, tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 40, "checkpoint_every": 0})
    job = start(svc, base_inputs, cfg)
    while svc.manager.get(job.id).step < 2:
        threading.Event().wait(0.05)
    assert svc.manager.shutdown(timeout=60) == [job.id]
    assert job.state == "interrupted" and job.resumable, (job.state, job.error)
    assert loadable_step(job.checkpoint) >= 2
    again = JobManager(svc.manager.state_path).get(job.id)  # what the restarted server reads
    assert again.state == "interrupted" and again.checkpoint == job.checkpoint


def test_two_resumes_of_one_job_never_both_start(tmp_path):
    m = JobManager(str(tmp_path / "jobs.json"))
    parent = m.wait(m.submit("p", lambda ctx: {}).id, 10)
    parent.state, parent.checkpoint, parent.resume_prompt = "cancelled", __file__, PROMPT
    results, barrier = [], threading.Barrier(8)

    def resume():
        barrier.wait()
        try:
            results.append(m.submit("r", lambda ctx: {}, resumed_from=parent.id).id)
        except ResumeRefused as e:
            results.append(str(e))

    threads = [threading.Thread(target=resume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    started = [r for r in results if "already resumed" not in r]
    assert len(started) == 1 and parent.continued_by == started[0] and not parent.resumable, results


@pytest.mark.parametrize("content, words", [
    (b"\x00\x01garbage", "could not be read"),
    (b'{"version": 1, "jobs": [{"id": "0123456789ab", "na', "could not be read"),
    (b"[1, 2, 3]", "no 'jobs' list"),
    (b'{"version": 1, "jobs": {"a": 1}}', "no 'jobs' list"),
])
def test_unreadable_jobs_json_at_start(tmp_path, content, words):
    state = tmp_path / "jobs.json"
    state.write_bytes(content)
    m = JobManager(str(state))
    assert m.list() == [] and words in m.load_warnings[0], m.load_warnings
    assert [p.name.startswith("jobs.json.damaged-") for p in tmp_path.iterdir()] == [True], "kept aside"
    m.wait(m.submit("next", lambda ctx: {}).id, 10)
    assert json.loads(state.read_text())["jobs"][0]["name"] == "next"


def test_damaged_entries_are_skipped_and_named(tmp_path):
    good = {"id": "0123456789ab", "name": "cat", "state": "running", "checkpoint": "/x/step_000004.pt",
            "resume_prompt": PROMPT, "info": {"node_id": "3"}}
    state = tmp_path / "jobs.json"
    state.write_text(json.dumps({"version": 1, "jobs": [
        good, "just a string", {"id": "../../etc", "name": "x", "state": "done"},
        {"id": "aaaaaaaaaaaa", "name": "x", "state": "exploded"}, {"id": "bbbbbbbbbbbb", "name": 5, "state": "done"},
        {"id": "cccccccccccc", "name": "x", "state": "done", "unknown_field": 1, "step": 3}]}))
    m = JobManager(str(state))
    assert sorted(j.id for j in m.list()) == ["0123456789ab", "cccccccccccc"]
    assert m.get("0123456789ab").state == "interrupted"
    warning = m.load_warnings[0]
    for words in ("skipped 4 of 6", "entry 1 (not an object but str)", "'../../etc' is not a job id",
                  "unknown state 'exploded'", "name is not a str"):
        assert words in warning, warning


def test_unwritable_jobs_json_does_not_stop_a_job(tmp_path, monkeypatch):
    m = JobManager(str(tmp_path / "jobs.json"))
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("jobs.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(jobs_mod.os, "replace", replace)

    def work(ctx):
        for i in range(3):
            ctx.progress(i + 1, 3, 0.5)
        return {}

    assert m.wait(m.submit("j", work).id, 10).state == "done"
    assert [p.name for p in tmp_path.iterdir()] == [], "no temp file left behind"


@pytest.mark.parametrize("how", ["cancelled", "failed"])
def test_a_job_has_freed_its_copy_and_lora_when_its_end_is_announced(tmp_path, base_inputs, monkeypatch, how):
    """A client that resumes (or starts the next job) as soon as it hears a job ended must find its memory free:
    the full-size CPU run (bench/fullsize_cpu.py) had its resume refused by the host-RAM check because the cancelled
    job still held its private UNet copy (5 GB) and LoRA + optimiser (3.7 GB) when "cancelled" was announced."""
    monkeypatch.setattr(logging.getLogger("unziplora"), "propagate", False)  # pytest's handler keeps tracebacks
    refs, seen = {}, {}
    real_setup = Trainer._setup

    def setup(self):
        state = real_setup(self)
        refs["lora"] = weakref.ref(state.lora)
        return state

    monkeypatch.setattr(Trainer, "_setup", setup)
    if how == "failed":
        real_loss = Trainer._loss

        def loss(self, *a, **k):
            if self.__dict__.setdefault("_calls", 0) >= 2:
                raise RuntimeError("a bug in step 3")
            self._calls += 1
            return real_loss(self, *a, **k)

        monkeypatch.setattr(Trainer, "_loss", loss)

    def emit(_event, data):
        job = data["job"]
        if data["kind"] == "state" and job["state"] in ("cancelled", "failed", "done") and "at_end" not in seen:
            unet = refs["unet"]()
            seen["at_end"] = (job["state"], unet is None or all(p.is_meta for p in unet.parameters()),
                              refs["lora"]() is None)

    dirs = OutputDirs(loras=str(tmp_path / "loras"), bundles=str(tmp_path / "bundles"),
                      checkpoints=str(tmp_path / "checkpoints"))
    svc = TrainingService(JobManager(str(tmp_path / "jobs.json"), emit=emit), dirs, device=torch.device("cpu"))
    inputs = make_inputs(base_inputs)
    refs["unet"] = weakref.ref(inputs.unet)
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 40, "checkpoint_every": 0})
    job = svc.start(inputs, cfg, "cat", resume_prompt=PROMPT, node_id="3")
    del inputs
    if how == "cancelled":
        while svc.manager.get(job.id).step < 2:
            threading.Event().wait(0.02)
        svc.manager.cancel(job.id)
    svc.manager.wait(job.id, 240)
    state, copy_freed, lora_freed = seen["at_end"]
    assert state == how
    assert copy_freed, f"the {how} job's UNet copy still held its weights when its end was announced"
    assert lora_freed, f"the {how} job's LoRA pair (and optimiser) was still alive when its end was announced"
