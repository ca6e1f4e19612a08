"""Checkpoint retention for the job manager: what may be deleted, and when (the rule is in jobs.py's docstring).

Only ever touches <checkpoint_root>/<job id>/ of jobs the manager knows, and never a file that a queued,
running or resumable job points at.
"""

from __future__ import annotations

import logging
import os

from .job_records import ACTIVE, RESUMABLE, JobRecord, valid_job_id

log = logging.getLogger("unziplora")
KEEP_CHECKPOINTS_ENV = "UNZIPLORA_KEEP_CHECKPOINTS"


def keep_checkpoints(environ=os.environ) -> bool:
    return environ.get(KEEP_CHECKPOINTS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class ResumeRefused(ValueError):
    """A resume that would start a second job from the same checkpoint, or from a job that cannot resume; also
    a checkpoint deletion that a running job would miss."""


class CheckpointRetention:
    """Mixed into JobManager: uses its _jobs, _lock, checkpoint_root, _save and _emit."""

    # ---- checkpoints -------------------------------------------------------------------------------------
    def job_folder(self, job_id: str) -> str | None:
        if not self.checkpoint_root or not valid_job_id(job_id):
            return None
        return os.path.join(self.checkpoint_root, job_id)

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

    def _folder_bytes(self, job_id: str) -> int:
        """What the job keeps besides its final LoRAs: its checkpoint folder and the LoRAs saved by step."""
        job = self._jobs.get(job_id)
        steps = sum(os.path.getsize(p) for p in self.step_file_paths(job) if os.path.isfile(p)) if job else 0
        return steps + self._checkpoint_folder_bytes(job_id)

    def _checkpoint_folder_bytes(self, job_id: str) -> int:
        folder = self.job_folder(job_id)
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

    def _needed_checkpoints(self) -> set[str]:
        """Files some job may still resume from (or is starting from right now)."""
        return {os.path.abspath(j.checkpoint) for j in self._jobs.values() if j.checkpoint
                and (j.state in ACTIVE or (j.state in RESUMABLE and j.continued_by is None))}

    def _prune(self, job: JobRecord, everything: bool = False) -> int:
        """Delete the files of the job's checkpoint folder that no job needs (all of them: `everything`).
        Returns the bytes freed. Only ever touches <checkpoint_root>/<job id>/."""
        folder = self.job_folder(job.id)
        if folder is None or not os.path.isdir(folder):
            return 0
        needed = set() if everything else self._needed_checkpoints()
        freed = 0
        for entry in list(os.scandir(folder)):
            path = os.path.abspath(entry.path)
            if path in needed or not entry.is_file(follow_symlinks=False):
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
            pass  # not empty: it holds a needed checkpoint
        for j in self._jobs.values():
            if j.checkpoint and not os.path.exists(j.checkpoint) and os.path.dirname(os.path.abspath(j.checkpoint)) \
                    == os.path.abspath(folder):
                j.checkpoint = None
        job.checkpoint_bytes = self._folder_bytes(job.id)
        return freed

    def _after_checkpoint(self, job: JobRecord, previous: str | None) -> None:
        with self._lock:
            job.checkpoint_bytes = self._folder_bytes(job.id)
            if keep_checkpoints():
                return
            self._prune(job)
            owner = self._jobs.get(os.path.basename(os.path.dirname(previous))) if previous else None
            if owner is not None and owner is not job and owner.state not in ACTIVE:
                self._prune(owner)  # the job this one resumed: its checkpoint is superseded now

    def _after_end(self, job: JobRecord) -> None:
        with self._lock:
            if keep_checkpoints():
                job.checkpoint_bytes = self._folder_bytes(job.id)
                return
            # this job and the chain it continued: whatever no resumable job points at goes
            seen = set()
            current = job
            while current is not None and current.id not in seen:
                seen.add(current.id)
                if current.state not in ACTIVE:
                    self._prune(current)
                current = self._jobs.get(current.resumed_from) if current.resumed_from else None

    def delete_checkpoints(self, job_id: str) -> int:
        """DELETE /unziplora/jobs/{id}/checkpoints. ResumeRefused while the job or a job resuming from it is
        active. The job is no longer resumable afterwards. Returns the bytes freed."""
        with self._lock:
            job = self._jobs[job_id]
            if job.state in ACTIVE:
                raise ResumeRefused(f"job {job_id} is {job.state}: its checkpoints can be deleted once it has ended")
            folder = self.job_folder(job_id)
            for other in self._jobs.values():
                if other.state in ACTIVE and other.checkpoint and folder and \
                        os.path.dirname(os.path.abspath(other.checkpoint)) == os.path.abspath(folder):
                    raise ResumeRefused(f"job {other.id} is {other.state} and resumes from job {job_id}'s "
                                        "checkpoint: delete it once that job has ended")
            freed = self._prune(job, everything=True)
            for path in self.step_file_paths(job):  # the LoRAs saved by step go with the other extras
                try:
                    size = os.path.getsize(path)
                    os.remove(path)
                    freed += size
                except OSError:
                    pass
            job.info.pop("step_files", None)
            job.checkpoint_bytes = self._folder_bytes(job.id)
            job.checkpoint = None
            self._save()
        self._emit(job, kind="state")
        return freed
