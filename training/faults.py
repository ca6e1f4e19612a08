"""What a job says when training breaks: out of memory, a loss that is no longer finite, a disk that refuses a
write. Wrapped around the whole run by the job's work (training.service), so the loop itself stays plain.

Each message says what happened, at which step, what is kept and what to do. The original exception is dropped
before the new one is raised: its traceback holds the step's frames (activations, gradients), and keeping it
alive in a job record would keep the memory the message says was released.
"""

from __future__ import annotations

import errno
import gc
import os

import torch

from . import checkpoints

_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}


def kept_checkpoint(job) -> str:
    step = checkpoints.step_of(job.checkpoint) if job.checkpoint and os.path.isfile(job.checkpoint) else None
    if step is None:
        return "no checkpoint was saved before it, so a resume would start over"
    return f"the last good checkpoint (step {step}) is kept: Resume continues from it"


def is_out_of_memory(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return (isinstance(e, oom) if oom else False) or isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def release_memory(device) -> None:
    gc.collect()
    if getattr(device, "type", None) == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _where(e: OSError) -> str:
    """': <file or folder>' the failed call named (the job record shows it relative to ComfyUI's folders)."""
    names = [str(n) for n in (e.filename, e.filename2) if n]
    return f": {' -> '.join(names)}" if names else ""


def explained(run, job, device):
    """run() -> result; a fault becomes one clear exception (MemoryError, FloatingPointError, OSError)."""
    problem = None
    try:
        return run()
    except BaseException as e:  # noqa: BLE001 - only the three kinds below are rewritten; the rest re-raised
        at = f"step {job.step + 1} of {job.total}" if job.total else f"step {job.step + 1}"
        if is_out_of_memory(e):
            problem = MemoryError(f"out of memory at {at} on {device}: lower resolution or rank, set "
                                  "gradient_checkpointing on, or free memory used by other programs. The job's "
                                  f"memory was released; {kept_checkpoint(job)}")
        elif isinstance(e, FloatingPointError):
            problem = FloatingPointError(f"{e}. Training stopped; {kept_checkpoint(job)}")
        elif isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            problem = OSError(e.errno, f"{e.strerror or e}{_where(e)} (disk full or not writable?). Training "
                                       f"stopped; {kept_checkpoint(job)}")
        else:
            raise
    finally:
        release_memory(device)
    raise problem


def export_explained(export, job, device):
    """export() -> outputs; a failed write of the final files becomes one OSError. write_file_set has already
    removed its temps, so no half-written file is visible and earlier runs' files are untouched."""
    problem = None
    try:
        return export()
    except FileExistsError as e:  # a file took the job's output name while it trained: never overwritten
        problem = FileExistsError(errno.EEXIST, f"could not write the trained files: {e}, which appeared while the job "
                                                f"trained. Nothing was written; move it away and Resume: "
                                                f"{kept_checkpoint(job)}")
    except (OSError, RuntimeError) as e:  # safetensors reports a failed write as its own (RuntimeError-like) error
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:300]
        reason += _where(e) if isinstance(e, OSError) else ""
        problem = OSError(getattr(e, "errno", None) or errno.EIO,
                          f"could not write the trained files: {reason} (disk full or not writable?). Nothing was "
                          f"written; {kept_checkpoint(job)}")
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        problem = OSError(errno.EIO, f"could not write the trained files: {str(e)[:300]}. Nothing was written; "
                                     f"{kept_checkpoint(job)}")
    finally:
        release_memory(device)
    raise problem
