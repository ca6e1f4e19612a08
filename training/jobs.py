"""The background job manager: one worker thread, jobs queued behind each other, state kept on disk.

Knows nothing of torch or of the server: a job's work is a callable given a JobContext, and events go through
an `emit(event, data)` callable that the node layer wires to PromptServer.send_sync (thread-safe there).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

log = logging.getLogger("unziplora")

EVENT = "unziplora.progress"
ACTIVE = ("queued", "running", "cancelling")
FINAL = ("cancelled", "failed", "interrupted", "done")
RESUMABLE = ("cancelled", "failed", "interrupted")
LOSS_HISTORY = 1000  # the panel plots the whole run (the paper's 600 steps); longer runs keep the latest


class JobCancelled(Exception):
    """Raised inside the work when the stop event is set; the work saves a checkpoint first."""


@dataclass
class JobRecord:
    id: str
    name: str
    state: str = "queued"
    step: int = 0
    total: int = 0
    loss: float | None = None
    losses: list = field(default_factory=list)
    it_per_s: float | None = None
    eta_s: float | None = None
    outputs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    previews: list = field(default_factory=list)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    info: dict = field(default_factory=dict)  # mode, prompts, base model, node id: whatever the UI shows
    resume_prompt: dict | None = None  # the API prompt that started it, to re-queue with resume_from set
    resumed_from: str | None = None

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE and self.checkpoint is not None and self.resume_prompt is not None

    def public(self) -> dict:
        d = asdict(self)
        d.pop("resume_prompt")
        d["resumable"] = self.resumable
        return d


class JobContext:
    """What the work sees: progress reporting, the stop flag, preview announcements."""

    def __init__(self, manager: "JobManager", job: JobRecord):
        self._m = manager
        self.job = job
        self.stop_event = threading.Event()
        self._t0 = None
        self._step0 = 0
        self._last_emit = 0.0
        self._last_step_at = None
        self.preview_seconds = 0.0  # wall time spent rendering previews so far
        self.previews_rendered = 0
        self.previews_left: Callable[[int], int] | None = None  # step -> preview rounds still to come

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise JobCancelled()

    @property
    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        now = time.time()
        if self._t0 is None:
            self._t0, self._step0 = now, step
        job = self.job
        job.step, job.total = step, total
        if loss is not None:
            job.loss = float(loss)
            job.losses = (job.losses + [round(float(loss), 6)])[-LOSS_HISTORY:]
        done = step - self._step0
        if done > 0 and now > self._t0:
            job.it_per_s = done / (now - self._t0)
            # training steps at their own pace, plus the previews still to come at theirs (a preview round can
            # take as long as many steps: an average over both would be wrong until late in the run)
            train_s = max(1e-6, now - self._t0 - self.preview_seconds)
            job.eta_s = (total - step) * train_s / done + self._previews_eta(step)
        job.info.pop("activity", None)
        self._last_step_at = now
        # events every step for small jobs, at most ~4 per second otherwise; the file at most every 2 s
        if now - self._last_emit >= 0.25 or step == total:
            self._last_emit = now
            self._m._emit(job)
        self._m._save(throttle=True)

    def _previews_eta(self, step: int) -> float:
        if not self.previews_rendered or self.previews_left is None:
            return 0.0
        return self.previews_left(step) * self.preview_seconds / self.previews_rendered

    def preview_tick(self, kind: str, i: int, n: int) -> None:
        """A preview is sampling: say so, and let the ETA count down meanwhile (at most ~4 events a second)."""
        now = time.time()
        job = self.job
        job.info["activity"] = f"rendering the {kind} preview ({i + 1}/{n})"
        if job.eta_s is not None and self._last_step_at is not None:
            job.eta_s = max(0.0, job.eta_s - (now - self._last_step_at))
            self._last_step_at = now
        if now - self._last_emit >= 0.25:
            self._last_emit = now
            self._m._emit(job)

    def preview_done(self, seconds: float) -> None:
        self.preview_seconds += seconds
        self.previews_rendered += 1

    def set_checkpoint(self, path: str) -> None:
        self.job.checkpoint = path
        self._m._save()

    def add_preview(self, entry: dict) -> None:
        self.job.previews = (self.job.previews + [entry])[-12:]
        self._m._emit(self.job, kind="preview")
        self._m._save()


Work = Callable[[JobContext], dict]


class JobManager:
    def __init__(self, state_path: str | None, emit: Callable[[str, dict], None] | None = None):
        self.state_path = state_path
        self.emit = emit
        self._lock = threading.RLock()
        self._jobs: dict[str, JobRecord] = {}
        self._contexts: dict[str, JobContext] = {}
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._last_save = 0.0
        self._load()

    # ---- persistence -------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.state_path or not os.path.exists(self.state_path):
            return
        try:
            with open(self.state_path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            log.warning("unziplora: could not read job state %s: %s", self.state_path, e)
            return
        known = set(JobRecord.__dataclass_fields__)
        for item in raw.get("jobs", []):
            job = JobRecord(**{k: v for k, v in item.items() if k in known})
            if job.state in ACTIVE:
                # the process that ran it is gone: it stopped wherever it was
                job.state = "interrupted"
                job.error = job.error or "ComfyUI stopped while this job was queued or running"
                job.finished = job.finished or time.time()
            self._jobs[job.id] = job
        self._save()

    def _save(self, throttle: bool = False) -> None:
        if not self.state_path:
            return
        now = time.time()
        if throttle and now - self._last_save < 2.0:
            return
        with self._lock:
            self._last_save = now
            data = {"version": 1, "jobs": [asdict(j) for j in self._jobs.values()]}
            os.makedirs(os.path.dirname(self.state_path) or ".", exist_ok=True)
            tmp = f"{self.state_path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)

    def _emit(self, job: JobRecord, kind: str = "progress") -> None:
        if self.emit is None:
            return
        try:
            self.emit(EVENT, {"kind": kind, "job": job.public()})
        except Exception:  # a dead websocket must never kill a training run
            log.exception("unziplora: could not send a progress event")

    # ---- public API --------------------------------------------------------------------------------------
    def submit(self, name: str, work: Work, total: int = 0, info: dict | None = None,
               resume_prompt: dict | None = None, resumed_from: str | None = None, step: int = 0) -> JobRecord:
        """step: where the work starts (a resumed run starts at its checkpoint's step, and shows it at once)."""
        job = JobRecord(id=uuid.uuid4().hex[:12], name=name, total=total, step=step, info=dict(info or {}),
                        resume_prompt=resume_prompt, resumed_from=resumed_from)
        with self._lock:
            self._jobs[job.id] = job
            self._contexts[job.id] = JobContext(self, job)
            self._save()
            self._queue.put((job.id, work))
            self._ensure_worker()
        self._emit(job, kind="state")
        return job

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def list(self) -> list[JobRecord]:
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def cancel(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._jobs[job_id]
            if job.state == "queued":
                job.state, job.finished = "cancelled", time.time()
            elif job.state == "running":
                job.state = "cancelling"
                self._contexts[job_id].stop_event.set()
            else:
                return job
            self._save()
        self._emit(job, kind="state")
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job is final (tests, the blocking run mode)."""
        end = None if timeout is None else time.time() + timeout
        while self._jobs[job_id].state not in FINAL:
            if end is not None and time.time() > end:
                raise TimeoutError(f"job {job_id} still {self._jobs[job_id].state} after {timeout} s")
            time.sleep(0.05)
        return self._jobs[job_id]

    def context(self, job_id: str) -> JobContext:
        return self._contexts[job_id]

    # ---- the worker --------------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run_forever, name="unziplora-trainer", daemon=True)
            self._worker.start()

    def _run_forever(self) -> None:
        while True:
            job_id, work = self._queue.get()
            try:
                self._run_one(job_id, work)
            finally:
                self._queue.task_done()

    def _run_one(self, job_id: str, work: Work) -> None:
        job = self._jobs[job_id]
        ctx = self._contexts[job_id]
        if job.state != "queued":  # cancelled while waiting
            self._contexts.pop(job_id, None)
            return
        job.state, job.started = "running", time.time()
        self._save()
        self._emit(job, kind="state")
        try:
            outputs = work(ctx)
            job.outputs = dict(outputs or {})
            job.state = "done"
        except JobCancelled:
            job.state = "cancelled"
        except Exception as e:  # the reason goes to the UI; the traceback to the log
            log.exception("unziplora: job %s failed", job_id)
            job.state = "failed"
            job.error = f"{type(e).__name__}: {e}"
        finally:
            job.finished = time.time()
            self._contexts.pop(job_id, None)
            self._save()
            self._emit(job, kind="state")
