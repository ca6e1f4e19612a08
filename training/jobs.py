"""The background job manager: one worker thread, jobs queued behind each other, state kept on disk.

Knows nothing of torch or of the server: a job's work is a callable given a JobContext, and events go through
an `emit(event, data)` callable that the node layer wires to PromptServer.send_sync (thread-safe there).

Checkpoints (when `checkpoint_root` is set) live in <checkpoint_root>/<job id>/; which of them may be deleted, and
when, is retention.py's rule (CheckpointRetention), asked through this manager under its lock.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from dataclasses import asdict
from typing import Callable

from .job_records import ACTIVE, FINAL, RESUMABLE, JobRecord, record_from, valid_job_id
from .paths import PathDisplay
from .retention import CheckpointRetention, ResumeRefused, keep_checkpoints

log = logging.getLogger("unziplora")

EVENT = "unziplora.progress"
LOSS_HISTORY = 1000  # the panel plots the whole run (the paper's 600 steps); longer runs keep the latest
# re-exported: callers import these from here
__all__ = ["ACTIVE", "FINAL", "RESUMABLE", "JobRecord", "ResumeRefused", "keep_checkpoints", "valid_job_id"]


class JobCancelled(Exception):
    """Raised inside the work when the stop event is set; the work saves a checkpoint first."""


class JobInterrupted(JobCancelled):
    """Raised instead of JobCancelled when the server is shutting down (the job ends "interrupted")."""


class JobContext:
    """What the work sees: progress reporting, the stop flag, preview announcements."""

    def __init__(self, manager: "JobManager", job: JobRecord):
        self._m = manager
        self.job = job
        self.stop_event = threading.Event()
        self.interrupting = False  # the stop comes from a shutdown, not from Cancel
        self._t0 = None
        self._step0 = 0
        self._last_emit = 0.0
        self._last_step_at = None
        self.preview_seconds = 0.0  # wall time spent rendering previews so far
        self.previews_rendered = 0
        self.previews_left: Callable[[int], int] | None = None  # step -> preview rounds still to come
        # before the first round is measured: what one round costs, in training steps (service.preview_round_steps)
        self.preview_round_steps: float = 0.0

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise JobInterrupted() if self.interrupting else JobCancelled()

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
            job.eta_s = (total - step) * train_s / done + self._previews_eta(step, train_s / done)
        job.info.pop("activity", None)
        self._last_step_at = now
        # events every step for small jobs, at most ~4 per second otherwise; the file at most every 2 s
        if now - self._last_emit >= 0.25 or step == total:
            self._last_emit = now
            self._m.announce(job)
        self._m.persist(throttle=True)

    def _previews_eta(self, step: int, step_s: float) -> float:
        """The preview rounds still to come: at their measured cost once one has rendered, before that at the
        estimated number of training steps a round costs (step_s: the seconds of one training step)."""
        if self.previews_left is None:
            return 0.0
        per_round = (self.preview_seconds / self.previews_rendered if self.previews_rendered
                     else self.preview_round_steps * step_s)
        return self.previews_left(step) * per_round

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
            self._m.announce(job)

    def preview_done(self, seconds: float) -> None:
        self.preview_seconds += seconds
        self.previews_rendered += 1

    def set_checkpoint(self, path: str) -> None:
        self._m.checkpoint_saved(self.job, path)

    def add_step_files(self, step: int, files: dict) -> None:
        """The LoRAs saved at `step` (save_every): file names only, in the folders of the run's own outputs."""
        names = {k: os.path.basename(files[k]) for k in ("content", "style", "bundle") if files.get(k)}
        self.job.info.setdefault("step_files", {})[str(step)] = names
        self.job.checkpoint_bytes = self._m.retention.folder_bytes(self.job.id)  # the sidebar's disk figure
        self._m.announce(self.job, kind="state")
        self._m.persist()

    def add_preview(self, entry: dict) -> None:
        self.job.previews = (self.job.previews + [entry])[-12:]
        self._m.announce(self.job, kind="preview")
        self._m.persist()


Work = Callable[[JobContext], dict]


def losses_up_to(job: JobRecord, step: int) -> list[float]:
    """The job's losses of steps 1..step (it may have run past the checkpoint a resume starts from); the list
    ends at job.step, and keeps the latest LOSS_HISTORY."""
    extra = max(0, job.step - step)
    kept = job.losses[:len(job.losses) - extra] if extra else list(job.losses)
    return kept[-LOSS_HISTORY:]


class JobManager:
    def __init__(self, state_path: str | None, emit: Callable[[str, dict], None] | None = None,
                 checkpoint_root: str | None = None, display: PathDisplay | None = None,
                 after_job: Callable[[], object] | None = None):
        """after_job: called once a job's work has ended and its memory is dropped, before the end is announced
        (the service passes host_ram.return_freed_memory)."""
        self.state_path = state_path
        self.emit = emit
        self.after_job = after_job
        self.display = display
        self.load_warnings: list[str] = []  # what start-up skipped in jobs.json, shown by GET /unziplora/jobs
        self._lock = threading.RLock()
        self._jobs: dict[str, JobRecord] = {}
        self.retention = CheckpointRetention(checkpoint_root, self._jobs)
        self._contexts: dict[str, JobContext] = {}
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._ending: set[str] = set()  # final already, its checkpoints not yet tidied / its last event not yet sent
        self._last_save = 0.0
        self._load()

    # ---- persistence -------------------------------------------------------------------------------------
    def _shown_state_path(self) -> str:
        return self.display.path(self.state_path) if self.display else os.path.basename(self.state_path)

    def _load(self) -> None:
        if not self.state_path or not os.path.exists(self.state_path):
            return
        shown = self._shown_state_path()
        try:
            with open(self.state_path, encoding="utf-8") as f:
                raw = json.load(f)
            items = raw.get("jobs") if isinstance(raw, dict) else None
            if not isinstance(items, list):
                raise ValueError("no 'jobs' list")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            # keep the damaged file for whoever wants to look at it; the next save writes a fresh one
            aside = f"{self.state_path}.damaged-{int(time.time())}"
            try:
                os.replace(self.state_path, aside)
                kept = f"; kept as {os.path.basename(aside)}"
            except OSError:
                kept = ""
            self._warn(f"{shown} could not be read ({type(e).__name__}: {str(e)[:200]}): started with no "
                       f"jobs{kept}")
            return
        known = set(JobRecord.__dataclass_fields__)
        skipped = []
        for i, item in enumerate(items):
            job, why = record_from(item, known)
            if job is None:
                skipped.append(f"entry {i} ({why})")
                continue
            if job.state in ACTIVE:
                # the process that ran it is gone: it stopped wherever it was
                job.state = "interrupted"
                job.error = job.error or "ComfyUI stopped while this job was queued or running"
                job.finished = job.finished or time.time()
            job.resume_pending = None  # that server's queue is gone too
            job.checkpoint_bytes = self.retention.folder_bytes(job.id)
            self._jobs[job.id] = job
        if skipped:
            self._warn(f"{shown}: skipped {len(skipped)} of {len(items)} job records: " + "; ".join(skipped[:10]))
        self._save()

    def _warn(self, message: str) -> None:
        log.warning("unziplora: %s", message)
        self.load_warnings.append(message)

    def _save(self, throttle: bool = False) -> None:
        if not self.state_path:
            return
        now = time.time()
        if throttle and now - self._last_save < 2.0:
            return
        with self._lock:
            self._last_save = now
            data = {"version": 1, "jobs": [asdict(j) for j in self._jobs.values()]}
            tmp = f"{self.state_path}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                os.makedirs(os.path.dirname(self.state_path) or ".", exist_ok=True)
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(data, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.state_path)
            except OSError as e:
                # a full or read-only disk must not kill a training run: the previous file stays as it was
                log.warning("unziplora: could not save job state to %s: %s", self._shown_state_path(), e)
                try:
                    os.remove(tmp)
                except OSError:
                    pass

    def _emit(self, job: JobRecord, kind: str = "progress") -> None:
        if self.emit is None:
            return
        try:
            self.emit(EVENT, {"kind": kind, "job": self.public(job)})
        except Exception:  # a dead websocket must never kill a training run
            log.exception("unziplora: could not send a progress event")

    def public(self, job: JobRecord) -> dict:
        return job.public(self.display)

    # what a job's work (JobContext) may call: tell the browsers, write jobs.json
    def announce(self, job: JobRecord, kind: str = "progress") -> None:
        """Send the job's record to every browser (kind: progress, preview or state)."""
        self._emit(job, kind)

    def persist(self, throttle: bool = False) -> None:
        """Write jobs.json (throttle: at most every 2 s, for per-step updates)."""
        self._save(throttle=throttle)

    # ---- checkpoints (the rule: retention.py) ------------------------------------------------------------
    @property
    def checkpoint_root(self) -> str | None:
        return self.retention.root

    @checkpoint_root.setter
    def checkpoint_root(self, root: str | None) -> None:
        self.retention.root = root

    @property
    def prompt_waiting(self):
        """prompt_id -> whether that prompt is still queued or running in ComfyUI (set by the node layer)."""
        return self.retention.prompt_waiting

    @prompt_waiting.setter
    def prompt_waiting(self, fn) -> None:
        self.retention.prompt_waiting = fn

    def job_folder(self, job_id: str) -> str | None:
        return self.retention.folder(job_id)

    def checkpoint_saved(self, job: JobRecord, path: str) -> None:
        """The job's work saved a checkpoint at `path`: the job points at it, and what it supersedes may go."""
        with self._lock:
            previous, job.checkpoint = job.checkpoint, path
            self.retention.after_checkpoint(job, previous)
            self._save()

    def delete_checkpoints(self, job_id: str) -> int:
        """DELETE /unziplora/jobs/{id}/checkpoints: ResumeRefused when a queued, running or resuming job needs a
        file of it (retention.py). The job is no longer resumable afterwards. Returns the bytes freed."""
        with self._lock:
            job = self._jobs[job_id]
            freed = self.retention.delete(job)
            self._save()
        self._emit(job, kind="state")
        return freed

    # ---- public API --------------------------------------------------------------------------------------
    def check_resume(self, job_id: str) -> JobRecord:
        """The job a new run may resume from, or ResumeRefused saying why not (in the node's words)."""
        job = self._jobs.get(job_id) if valid_job_id(job_id) else None
        if job is None:
            raise ResumeRefused(f"Resume of job {str(job_id)[:40]!r}: no job with that id")
        if job.continued_by:
            raise ResumeRefused(f"Resume of job {job_id!r}: job {job_id} was already resumed; it continues as "
                                f"job {job.continued_by}")
        if job.state not in RESUMABLE:
            raise ResumeRefused(f"Resume of job {job_id!r}: job {job_id} is {job.state}; only cancelled, failed or "
                                "interrupted jobs can be resumed")
        if not job.checkpoint or not os.path.isfile(job.checkpoint):
            raise ResumeRefused(f"Resume of job {job_id!r}: job {job_id} has no checkpoint to resume from")
        return job

    def submit(self, name: str, work: Work, total: int = 0, info: dict | None = None,
               resume_prompt: dict | None = None, resumed_from: str | None = None, step: int = 0) -> JobRecord:
        """step: where the work starts (a resumed run starts at its checkpoint's step, and shows it at once).
        resumed_from: checked and claimed under the lock, so two prompts can never both continue one job."""
        job = JobRecord(id=uuid.uuid4().hex[:12], name=name, total=total, step=step, info=dict(info or {}),
                        resume_prompt=resume_prompt, resumed_from=resumed_from)
        with self._lock:
            if resumed_from is not None:
                parent = self.check_resume(resumed_from)
                parent.continued_by, parent.resume_pending = job.id, None
                # the queued job needs its parent's checkpoint from now on, not only once it starts: retention and
                # DELETE see the claim while it waits behind another job (issue 20)
                job.checkpoint = parent.checkpoint
                job.losses = losses_up_to(parent, step)  # the curve goes on from the checkpoint, not from empty
                job.info["resumed_at_step"] = step
            self._jobs[job.id] = job
            self._contexts[job.id] = JobContext(self, job)
            self._save()
            self._queue.put((job.id, work))
            self._ensure_worker()
        if resumed_from is not None:
            self._emit(self._jobs[resumed_from], kind="state")  # its Resume button goes away
        self._emit(job, kind="state")
        return job

    def mark_resume_pending(self, job_id: str, prompt_id: str | None) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.resume_pending = prompt_id
            self._save()

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id) if isinstance(job_id, str) else None

    def list(self) -> list[JobRecord]:
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def cancel(self, job_id: str, interrupt: bool = False) -> JobRecord:
        """interrupt: a shutdown, not the user: the job ends "interrupted" (resumable) rather than "cancelled"."""
        with self._lock:
            job = self._jobs[job_id]
            if job.state == "queued":
                job.state, job.finished = ("interrupted" if interrupt else "cancelled"), time.time()
            elif job.state in ("running", "cancelling"):
                job.state = "cancelling"
                ctx = self._contexts.get(job_id)
                if ctx is not None:
                    ctx.interrupting = ctx.interrupting or interrupt
                    ctx.stop_event.set()
            else:
                return job
            self._save()
        self._emit(job, kind="state")
        return job

    def shutdown(self, timeout: float = 10.0) -> list[str]:
        """Stop every job for a server shutdown: the running one saves a checkpoint (up to `timeout` s) and all
        end "interrupted", resumable after the restart. Returns the ids of the jobs it stopped."""
        with self._lock:
            active = [j for j in self._jobs.values() if j.state in ACTIVE]
            for job in active:
                self.cancel(job.id, interrupt=True)
        end = time.time() + timeout
        while time.time() < end and any(j.state in ACTIVE for j in active):
            time.sleep(0.05)
        with self._lock:
            for job in active:
                if job.state in ACTIVE:  # still saving: the restart marks it interrupted from the file anyway
                    job.state, job.finished = "interrupted", time.time()
                    job.error = "ComfyUI shut down before the job could save a checkpoint"
            self._save()
        return [j.id for j in active]

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job is final, its checkpoints tidied and its last event sent (tests, the blocking run
        mode)."""
        end = None if timeout is None else time.time() + timeout
        while self._jobs[job_id].state not in FINAL or job_id in self._ending:
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
                # the work closure holds the job's private UNet copy: never keep it alive while waiting
                del work
                self._queue.task_done()

    def _run_one(self, job_id: str, work: Work) -> None:
        job = self._jobs[job_id]
        ctx = self._contexts[job_id]
        if job.state != "queued":  # cancelled while waiting
            self._contexts.pop(job_id, None)
            return
        job.state, job.started = "running", time.time()
        self._ending.add(job_id)
        self._save()
        self._emit(job, kind="state")
        try:
            outputs = work(ctx)
            job.outputs = dict(outputs or {})
            job.state = "done"
        except JobCancelled as e:
            traceback.clear_frames(e.__traceback__)  # the frames hold the trainer: its LoRA pair and optimiser
            if ctx.interrupting:
                job.state = "interrupted"
                job.error = "ComfyUI shut down during the job; it saved a checkpoint and can be resumed"
            else:
                job.state = "cancelled"
        except Exception as e:  # the reason goes to the UI; the traceback to the log
            log.exception("unziplora: job %s failed", job_id)
            traceback.clear_frames(e.__traceback__)
            job.state = "failed"
            job.error = f"{type(e).__name__}: {e}"
        finally:
            # what the job held is free before anyone hears it ended (a client may queue a resume at once);
            # cycles among the trainer's closures would otherwise wait for the collector's next pass
            gc.collect()
            if self.after_job is not None:
                try:
                    self.after_job()
                except Exception:  # tidying memory must never lose the job's end
                    log.exception("unziplora: after-job hook failed")
            job.finished = time.time()
            self._contexts.pop(job_id, None)
            try:
                with self._lock:
                    self.retention.after_end(job)
            except OSError:
                log.exception("unziplora: could not tidy the checkpoints of job %s", job_id)
            finally:
                self._save()
                self._emit(job, kind="state")
                self._ending.discard(job_id)
