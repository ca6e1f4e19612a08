"""Resumable checkpoints: the format version, the file name (written and parsed here only), save and load.

A checkpoint is <folder>/step_NNNNNN.pt, a torch.save of plain tensors and containers: the LoRA pair, the
column schedule, the optimiser, the loss scaler, the CPU generator and what the run was made with (settings,
base model fingerprint, model sampling), so a resumed run ends with the same weights as an uninterrupted one.
Which files may be deleted, and when, is retention.py's business.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time

import torch

VERSION = 1
_NAME = re.compile(r"step_(\d+)\.pt$")


def file_name(step: int) -> str:
    return f"step_{step:06d}.pt"


def step_of(path: str | None) -> int | None:
    """The step a checkpoint was saved at, from its file name; None for anything else."""
    m = _NAME.search(os.path.basename(path or ""))
    return int(m.group(1)) if m else None


def save(folder: str, step: int, state: dict) -> str:
    """Write `state` (its "lora" entry: CPU tensors) as the checkpoint of `step`, whole or not at all. Raises
    FloatingPointError for non-finite LoRA weights, OSError (naming the step) for a failed write."""
    if not all(torch.isfinite(v).all() for v in state["lora"].values() if v.is_floating_point()):
        raise FloatingPointError(f"the LoRA weights are no longer finite at step {step}: not saved as a checkpoint")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, file_name(step))
    state = dict(state, version=VERSION, step=step, saved_at=time.time())
    tmp = path + ".tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as e:  # a full or read-only disk, or a stop mid-write: no half file stays behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not isinstance(e, Exception):
            raise
        # torch.save reports a failed write as a RuntimeError from its zip writer: one clear OSError instead
        reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0])
        raise OSError(getattr(e, "errno", None) or errno.EIO,
                      f"could not save the checkpoint of step {step}: {reason}", path) from None
    return path


def load(path: str) -> dict:
    """The checkpoint's state; ValueError for another format version."""
    # weights_only: a checkpoint is plain tensors and containers; nothing in it may run code
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has version {state.get('version')}, expected {VERSION}")
    return state
