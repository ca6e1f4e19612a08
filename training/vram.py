"""A training job's GPU memory, made visible to ComfyUI's own memory planning while the job runs.

ComfyUI plans every model load (comfy.model_management.load_models_gpu) from the device's free memory and
extra_reserved_memory(): it frees or partially loads models until `memory_required + extra_reserved_memory()`
is free. A job's weights show as used, but its activations do not: between steps torch's cache holds them
as reserved-but-inactive, which get_free_memory() counts as free, so a prompt queued during training plans
into memory the job's next step needs, and one of the two runs out. While a job runs, its expected peak
minus what it already holds on the device is added to ComfyUI's EXTRA_RESERVED_VRAM (the value --reserve-vram
sets); when the job ends, however it ends, exactly that amount is taken off again.

Under dynamic VRAM (comfy-aimdo) model weights are paged in on demand and evicted when an allocation would
fail, so weights make room by themselves; the reservation still keeps the planning of inference memory
(minimum_inference_memory) and any non-dynamic model's load out of the job's space.
"""

from __future__ import annotations

import logging
import threading

import torch

log = logging.getLogger("unziplora")

GiB = 1024**3

# Activation memory of one SDXL-size training step (2.57 G parameters, batch 1) per megapixel of training
# resolution, per gradient-checkpointing mode (unziplora/checkpointing.py: all blocks, the 10-deep blocks, none);
# scaled by the UNet's size and the dtype width. Planning numbers: the job replaces the estimate with its measured
# peak after its first steps. "deep" sits where bench_memory.py puts selective between the other two at 1024 px
# (tensors saved for backward 1.12 / 2.63 / 5.64 GiB for all / deep / off: a third of the way from all to off).
ACTIVATION_BYTES_PER_MPIX = {"all": 3 * GiB, "deep": 8 * GiB, "off": 18 * GiB}
SDXL_PARAMS = 2.567e9
LORA_ALLOWANCE = 768 * 1024**2  # LoRA weights, grads, AdamW moments, mergers, masks (rank 64, both LoRAs)
COMFY_WORKSPACE = 1 * GiB  # what a prompt beside the job needs on top of ComfyUI's minimum inference memory

_lock = threading.Lock()


def _model_management():
    """ComfyUI's model management module. The hook this file uses (EXTRA_RESERVED_VRAM, read through
    extra_reserved_memory() by load_models_gpu and minimum_inference_memory; get_total_memory) is the same in
    ComfyUI 0.3.75 and 0.33.0; a version that moves it needs a change here only."""
    import comfy.model_management as mm

    return mm


def _add_to_comfy_reserve(delta: int) -> None:
    mm = _model_management()
    with _lock:
        mm.EXTRA_RESERVED_VRAM = int(mm.EXTRA_RESERVED_VRAM) + int(delta)


def comfy_reserved() -> int:
    return int(_model_management().extra_reserved_memory())


def device_total(device: torch.device) -> int:
    return int(_model_management().get_total_memory(device))


def accounts_for(device: torch.device) -> bool:
    """Only a CUDA device is planned by ComfyUI (its CPU path ignores reserved VRAM)."""
    return torch.device(device).type == "cuda"


def tensor_bytes_on(module: torch.nn.Module, device: torch.device) -> int:
    device = torch.device(device)
    n = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type == device.type:
            n += t.numel() * t.element_size()
    return n


def estimate_job_bytes(unet: torch.nn.Module, resolution: int, dtype: torch.dtype, checkpointing: str | bool,
                       rank: int = 64) -> int:
    """Expected peak GPU bytes of a training job: the UNet in the compute dtype, the LoRA side, activations.
    checkpointing: the mode the loop applies (checkpointing.checkpointing_mode: all, deep, off); True / False
    mean all / off."""
    if isinstance(checkpointing, bool):
        checkpointing = "all" if checkpointing else "off"
    params = sum(p.numel() for p in unet.parameters())
    width = torch.finfo(dtype).bits // 8
    weights = params * width
    mpix = (resolution * resolution) / 2**20
    act = ACTIVATION_BYTES_PER_MPIX[checkpointing] * mpix * (params / SDXL_PARAMS) * (width / 2)
    lora = LORA_ALLOWANCE * max(rank, 1) / 64
    return int(weights + act + lora)


def weight_bytes(unet: torch.nn.Module, dtype: torch.dtype) -> int:
    """The UNet's weights in the compute dtype: what the job holds on the card for certain."""
    return sum(p.numel() for p in unet.parameters()) * (torch.finfo(dtype).bits // 8)


def fit_message(budget: int, total: int, floor: int = 0) -> tuple[str | None, str | None]:
    """(error, warning) for a job that needs `floor` bytes for certain and about `budget` bytes at its peak, on a
    card of `total` bytes. Only the certain part fails the job: the peak is an estimate."""
    mm = _model_management()
    comfy_min = int(mm.minimum_inference_memory()) + COMFY_WORKSPACE
    need, have = budget / GiB, total / GiB
    if floor > total:
        return (f"the model's weights alone need {floor / GiB:.1f} GiB of GPU memory and the GPU has {have:.1f} GiB: "
                "this GPU cannot train this model"), None
    if budget > total:
        return None, (f"this training needs about {need:.1f} GiB of GPU memory and the GPU has {have:.1f} GiB, so it "
                      "may run out of memory: lower resolution, set gradient_checkpointing on, or use precision bf16")
    if budget + comfy_min > total:
        return None, (f"GPU memory is tight: training needs about {need:.1f} GiB of {have:.1f} GiB, leaving "
                      f"{(total - budget) / GiB:.1f} GiB for ComfyUI; image prompts queued while it trains run "
                      "with their models offloaded (slower), and a large one may run out of memory")
    return None, None


class VramReservation:
    """The part of a job's expected peak that ComfyUI cannot see as used, kept in EXTRA_RESERVED_VRAM.

    held(): the bytes the job holds on the device right now (they already show as used).
    """

    def __init__(self, device: torch.device, budget: int, held=lambda: 0):
        self.device = torch.device(device)
        self.budget = int(budget)
        self.held = held
        self.added = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self._base_allocated = 0
        self.active = False

    def start(self) -> "VramReservation":
        self.active = True
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base_allocated = torch.cuda.memory_allocated(self.device)
        self.update()
        return self

    def update(self) -> int:
        """Re-plan after the job's footprint changed (weights moved, a step measured). Returns the reserve."""
        if not self.active:
            return 0
        want = max(0, self.budget - int(self.held()))
        _add_to_comfy_reserve(want - self.added)
        self.added = want
        return want

    def measure(self) -> None:
        """Take the measured peak (since start, above what others held then) as the budget. The peak is the
        process's: a prompt sampling meanwhile makes it larger, which errs on the safe side."""
        if self.device.type != "cuda" or not torch.cuda.is_available():
            return
        self.peak_allocated = max(self.peak_allocated,
                                  torch.cuda.max_memory_allocated(self.device) - self._base_allocated)
        self.peak_reserved = max(self.peak_reserved, torch.cuda.max_memory_reserved(self.device))
        self.budget = self.peak_allocated
        self.update()

    def release(self) -> None:
        if self.added:
            _add_to_comfy_reserve(-self.added)
        self.added = 0
        self.active = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.release()
        return False
