"""Checkpoint retention: which checkpoint files may be deleted, and when. The rule lives here and only here.

The one question, asked by the automatic tidying and by DELETE /unziplora/jobs/{id}/checkpoints alike:
"does any queued, running or resumable job need this file?" (`claims`). A job needs the file its record points
at while it is queued, running or cancelling (a queued resume points at its parent's checkpoint from the moment
it is submitted, not only once it starts), while it is resumable (cancelled, failed or interrupted and not yet
resumed), and while a resume prompt for it waits in ComfyUI's queue.

- Tidying (after each checkpoint and when a job ends) deletes what nobody claims in the job's folder and in the
  folder of the job it continued; UNZIPLORA_KEEP_CHECKPOINTS=1 keeps everything. Nothing is deleted at start-up:
  a record skipped from a damaged jobs.json may still need its files.
- DELETE removes a job's folder on request: the job's own resumability is what the user gives up, so its own
  claim as a resumable job does not count; any other claim (the job is active, a resume of it is queued or
  running, another job can resume from a file in it) refuses with ResumeRefused naming the claimant.

Only ever touches <root>/<job id>/ of jobs the manager knows. The caller holds the manager's lock.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from .job_records import ACTIVE, RESUMABLE, JobRecord, valid_job_id

log = logging.getLogger("unziplora")
KEEP_CHECKPOINTS_ENV = "UNZIPLORA_KEEP_CHECKPOINTS"


def keep_checkpoints(environ=os.environ) -> bool:
    return environ.get(KEEP_CHECKPOINTS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class ResumeRefused(ValueError):
    """A resume that would start a second job from the same checkpoint, or from a job that cannot resume; also
    a checkpoint deletion that a queued, running or resuming job would miss."""


class CheckpointRetention:
    """root: <output>/unziplora/checkpoints (None: nothing is ever deleted). jobs: the manager's live id -> record
    map. prompt_waiting(prompt_id): whether a resume prompt is still queued or running in ComfyUI (None: a
    recorded pending resume counts as waiting)."""

    def __init__(self, root: str | None, jobs: dict[str, JobRecord],
                 prompt_waiting: Callable[[str], bool] | None = None):
        self.root = root
        self.jobs = jobs
        self.prompt_waiting = prompt_waiting

    # ---- where ---------------------------------------------------------------------------------------
    def folder(self, job_id: str) -> str | None:
        if not self.root or not valid_job_id(job_id):
            return None
        return os.path.join(self.root, job_id)

    def step_file_paths(self, job: JobRecord) -> list[str]:
        """The LoRAs a job saved every save_every steps (info.step_files holds names; the folders are those of
        its own outputs)."""
        planned = job.info.get("planned_outputs") or {}
        out = []
        for files in (job.info.get("step_files") or {}).values():
            for kind, name in (files or {}).items():
                base = planned.get(kind)
                if isinstance(base, str) and isinstance(name, str) and os.path.basename(name) == name:
                    out.append(os.path.join(os.path.dirname(base), name))
        return out

    def folder_bytes(self, job_id: str) -> int:
        """What the job keeps besides its final LoRAs: its checkpoint folder and the LoRAs saved by step."""
        job = self.jobs.get(job_id)
        steps = sum(os.path.getsize(p) for p in self.step_file_paths(job) if os.path.isfile(p)) if job else 0
        return steps + self._checkpoint_folder_bytes(job_id)

    def _checkpoint_folder_bytes(self, job_id: str) -> int:
        folder = self.folder(job_id)
        if folder is None:
            return 0
        total = 0
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            return 0
        return total

    # ---- the one question ------------------------------------------------------------------------------
    def _resume_waiting(self, job: JobRecord) -> bool:
        if not job.resume_pending:
            return False
        return True if self.prompt_waiting is None else bool(self.prompt_waiting(job.resume_pending))

    def claim(self, job: JobRecord) -> str | None:
        """Why `job` needs its checkpoint file (a few words), or None when it does not."""
        if not job.checkpoint:
            return None
        if job.state in ACTIVE:
            return f"is {job.state}"
        if job.state in RESUMABLE and job.continued_by is None:
            return "can be resumed"
        return None

    def claims(self, path: str) -> list[tuple[JobRecord, str]]:
        """Every job that needs the file at `path`, with why: the answer to "may this file go?"."""
        path = os.path.abspath(path)
        out = []
        for job in self.jobs.values():
            why = self.claim(job)
            if why is not None and os.path.abspath(job.checkpoint) == path:
                out.append((job, why))
        return out

    # ---- tidying --------------------------------------------------------------------------------------
    def prune(self, job: JobRecord, everything: bool = False) -> int:
        """Delete the files of the job's folder that no job claims (all of them: `everything`). Returns the bytes
        freed."""
        folder = self.folder(job.id)
        if folder is None or not os.path.isdir(folder):
            return 0
        freed = 0
        for entry in list(os.scandir(folder)):
            path = os.path.abspath(entry.path)
            if not entry.is_file(follow_symlinks=False) or (not everything and self.claims(path)):
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
                os.remove(path)
                freed += size
            except OSError as e:
                log.warning("unziplora: could not delete %s: %s", entry.name, e)
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty: it holds a claimed checkpoint
        for j in self.jobs.values():
            if j.checkpoint and not os.path.exists(j.checkpoint) and os.path.dirname(os.path.abspath(j.checkpoint)) \
                    == os.path.abspath(folder):
                j.checkpoint = None
        job.checkpoint_bytes = self.folder_bytes(job.id)
        return freed

    def _owner(self, path: str | None) -> JobRecord | None:
        """The job whose folder holds `path`."""
        return self.jobs.get(os.path.basename(os.path.dirname(path))) if path else None

    def after_checkpoint(self, job: JobRecord, previous: str | None) -> None:
        """A job saved a checkpoint (`previous`: the file it pointed at before, perhaps its parent's)."""
        job.checkpoint_bytes = self.folder_bytes(job.id)
        if keep_checkpoints():
            return
        self.prune(job)
        owner = self._owner(previous)
        if owner is not None and owner is not job and owner.state not in ACTIVE:
            self.prune(owner)  # the job this one resumed: its checkpoint is superseded now

    def after_end(self, job: JobRecord) -> None:
        """A job ended: whatever nobody claims in its folder and the folders of the chain it continued goes."""
        if keep_checkpoints():
            job.checkpoint_bytes = self.folder_bytes(job.id)
            return
        seen = set()
        current = job
        while current is not None and current.id not in seen:
            seen.add(current.id)
            if current.state not in ACTIVE:
                self.prune(current)
            current = self.jobs.get(current.resumed_from) if current.resumed_from else None

    # ---- DELETE ---------------------------------------------------------------------------------------
    def delete_refusal(self, job: JobRecord) -> str | None:
        """Why DELETE of the job's checkpoints must be refused (409), or None."""
        if job.state in ACTIVE:
            return f"job {job.id} is {job.state}: its checkpoints can be deleted once it has ended"
        folder = self.folder(job.id)
        files = []
        if folder is not None and os.path.isdir(folder):
            files = [e.path for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
        if job.checkpoint and job.checkpoint not in files:
            files.append(job.checkpoint)  # a queued resume points into its parent's folder
        for path in files:
            for other, why in self.claims(path):
                if other is job and not self._resume_waiting(job):
                    continue  # its own resumability: what DELETE gives up on purpose
                if other is job:
                    return (f"job {job.id} is being resumed by prompt {job.resume_pending}: delete its checkpoints "
                            "once that resume has ended (or was removed from the queue)")
                if other.state in ACTIVE:
                    return (f"job {other.id} is {other.state} and resumes from job {job.id}'s checkpoint: delete it "
                            "once that job has ended")
                return (f"job {other.id} {why} from job {job.id}'s checkpoint: delete job {other.id}'s checkpoints "
                        "first")
        return None

    def delete(self, job: JobRecord) -> int:
        """The job's folder goes, and the job points at no checkpoint any more (it is no longer resumable); a file
        it pointed at in another job's folder is left to the tidying rule there. Returns the bytes freed."""
        refusal = self.delete_refusal(job)
        if refusal:
            raise ResumeRefused(refusal)
        released = job.checkpoint
        freed = self.prune(job, everything=True)
        for path in self.step_file_paths(job):  # the LoRAs saved by step go with the other extras
            try:
                size = os.path.getsize(path)
                os.remove(path)
                freed += size
            except OSError:
                pass
        job.info.pop("step_files", None)
        job.checkpoint = None
        job.checkpoint_bytes = self.folder_bytes(job.id)
        owner = self._owner(released)
        if owner is not None and owner is not job and not keep_checkpoints():
            freed += self.prune(owner)
        return freed
