"""A training job's host RAM: what it will add, checked against what the machine has before the job is queued.

A job that does not fit is not merely slow: the kernel's OOM killer ends the largest process, which is ComfyUI
itself, with the user's queue and unsaved workflow. So Train refuses such a job on the node, with the numbers.

What a job adds to ComfyUI's process (measured on the full-size SDXL UNet, bench/fullsize_ram.py):
  - the private copy of the UNet (training/model_copy.py), in the compute dtype, where it trains: on the host
    when the job trains on the CPU; nothing but one weight in flight when it trains on a CUDA card (the copy is
    made there weight by weight);
  - on the CPU only: the LoRA pair in fp32 with its gradients, the optimiser's moments and the step's prepared
    factors (`LORA_BYTES_PER_PARAM` per LoRA parameter), and the step's activations (`ACTIVATION_BYTES_PER_MPIX`
    per megapixel of training resolution, scaled by the UNet's size and the compute dtype's width).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GB = 1e9
SDXL_PARAMS = 2.567e9
# fp32 parameter + fp32 gradient + the step's factors in the compute dtype and their gradients, per LoRA
# parameter; the optimiser's state is added by name (OPTIMIZER_STATE_BYTES).
LORA_BYTES_PER_PARAM = 4 + 4 + 4
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw_bf16": 4}
# CPU activations of one full-size SDXL step (batch 1, no gradient checkpointing, bf16) per megapixel of training
# resolution, measured at 256 px (bench/fullsize_ram.py) and rounded up. Scaled by params / SDXL and dtype width.
ACTIVATION_BYTES_PER_MPIX = 24e9
MARGIN_BYTES = 0.5e9  # allocator slack, the first step's one-off buffers
CHECK_ENV = "UNZIPLORA_HOST_RAM_CHECK"  # "off": skip the check (e.g. a machine with ample swap)


def available_bytes() -> int:
    """Memory the kernel can still hand out without swapping (MemAvailable; psutil's `available` where
    /proc is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


_libc = None


def return_freed_memory() -> bool:
    """Hand the memory the process has freed back to the system (glibc's malloc_trim; False where there is none).

    A job frees its copy, LoRA pair and optimiser when it ends, but most SDXL tensors are under glibc's mmap
    threshold (which rises to 32 MB once large blocks are freed), so they came from the trainer thread's malloc
    arena, and freed arena memory stays with the process: the server's RSS stayed at 17.5 GB after a cancelled
    full-size CPU job, MemAvailable did not recover, and the resume queued next was refused by check() below
    (bench/fullsize_cpu.py). malloc_trim(0) returns the free pages of every arena."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 -- musl and other libcs have none
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    _libc.malloc_trim(0)
    return True


@dataclass(frozen=True)
class HostEstimate:
    copy: int  # the private UNet copy on the host
    lora: int  # LoRA factors, gradients, optimiser state, step factors (host part)
    activations: int  # one step's activations (host part)

    @property
    def total(self) -> int:
        return self.copy + self.lora + self.activations + int(MARGIN_BYTES)

    def describe(self) -> str:
        parts = [f"the model's private copy {self.copy / GB:.1f} GB"]
        if self.lora:
            parts.append(f"LoRA pair and optimiser {self.lora / GB:.1f} GB")
        if self.activations:
            parts.append(f"one step's activations {self.activations / GB:.1f} GB")
        return ", ".join(parts)


def lora_parameters(targets, mode, rank: int) -> int:
    """LoRA factor parameters (A and B of every side present) plus mergers, for these targets and mode."""
    n = 0
    for t in targets:
        sides = [s for s in mode.sides_for_block(t.block) if s is not None]
        n += len(sides) * (rank * (t.in_features + t.out_features) + t.out_features)
    return n


def estimate(unet_params: int, largest_tensor: int, dtype: torch.dtype, lora_params: int, optimizer: str,
             resolution: int, on_host: bool, checkpointing: bool = False) -> HostEstimate:
    """Host bytes a job adds to ComfyUI's process. on_host: the job trains on the CPU (else on a CUDA card,
    where only one weight at a time passes through the host)."""
    width = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    if not on_host:
        return HostEstimate(copy=int(largest_tensor * 4), lora=0, activations=0)
    optim = OPTIMIZER_STATE_BYTES.get(optimizer, OPTIMIZER_STATE_BYTES["adamw"])
    act = ACTIVATION_BYTES_PER_MPIX * (resolution * resolution / 2**20) * (unet_params / SDXL_PARAMS) * (width / 2)
    if checkpointing:
        act /= 6
    return HostEstimate(copy=int(unet_params * width), lora=int(lora_params * (LORA_BYTES_PER_PARAM + optim)),
                        activations=int(act))


def refusal(est: HostEstimate, available: int, device: torch.device) -> str | None:
    """The message refusing a job that the host cannot hold, or None when it fits."""
    if est.total <= available:
        return None
    where = "on the CPU" if device.type == "cpu" else f"on {device}"
    hints = ["close other programs", "use a smaller resolution"]
    if device.type == "cpu":
        hints += ["set precision bf16", "set optimizer low_memory", "lower rank", "train on a GPU"]
    return (f"not enough host memory to train {where}: this job needs about {est.total / GB:.1f} GB of RAM "
            f"({est.describe()}) and {available / GB:.1f} GB is available; starting it would get ComfyUI "
            f"killed by the system. To fit: " + ", ".join(hints) + f" (or set {CHECK_ENV}=off to skip this check)")


def check(est: HostEstimate, device: torch.device, environ=os.environ) -> None:
    """Raise MemoryError with refusal()'s message when the job does not fit in available host RAM."""
    if environ.get(CHECK_ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return
    return_freed_memory()  # what earlier jobs freed counts as available, not only what the kernel has spare
    message = refusal(est, available_bytes(), torch.device(device))
    if message:
        raise MemoryError(message)
