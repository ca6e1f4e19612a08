"""A training job's GPU memory, made visible to ComfyUI's own memory planning while the job runs.

ComfyUI plans every model load (comfy.model_management.load_models_gpu) from the device's free memory and
extra_reserved_memory(): it frees or partially loads models until `memory_required + extra_reserved_memory()`
is free. A job's weights show as used, but its activations do not: between steps torch's cache holds them
as reserved-but-inactive, which get_free_memory() counts as free, so a prompt queued during training plans
into memory the job's next step needs, and one of the two runs out. While a job runs, its expected peak
minus what it already holds on the device is added to ComfyUI's EXTRA_RESERVED_VRAM (the value --reserve-vram
sets); when the job ends, however it ends, exactly that amount is taken off again.

Under dynamic VRAM (comfy-aimdo, ComfyUI 0.16+ on NVIDIA) EXTRA_RESERVED_VRAM feeds only the estimate-based
path (minimum_inference_memory, non-dynamic loads): --reserve-vram reaches comfy-aimdo once, at start-up, as its
"simple VRAM headroom", the memory dynamic VRAM keeps free by evicting model pages. So on a dynamic-VRAM device
the job also raises that headroom by the same amount (AimdoHeadroom), and puts back exactly the value it found
when the last job ends, however it ends. Both values are process-wide: they are raised only for a job on
ComfyUI's own device, where the prompts' models live; a job on another device (Train's device input) holds its
memory there without shrinking what prompts on the main card may use.
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


def on_main_device(device: torch.device) -> bool:
    """Whether `device` is ComfyUI's own device (where its models load unless a workflow says otherwise)."""
    device, main = torch.device(device), torch.device(_model_management().get_torch_device())
    return device.type == main.type and (device.index or 0) == (main.index or 0)


class AimdoHeadroom:
    """comfy-aimdo's process-wide headroom, raised by the sum of the running jobs' shares.

    The value found when the first share arrives is the base; every change sets base + shares; when the last share
    goes the base is put back, so jobs one after another, or overlapping, never add up and never leave it raised.
    """

    def __init__(self):
        self.knob = None
        self.base: int | None = None
        self.shares: dict[int, int] = {}

    def current_raise(self) -> int:
        return sum(self.shares.values())

    def set_share(self, owner: object, nbytes: int, knob) -> tuple[int, int]:
        """Returns (base, the value set)."""
        with _lock:
            if not self.shares:
                self.knob, self.base = knob, int(knob.get())
            self.shares[id(owner)] = max(0, int(nbytes))
            value = self.base + self.current_raise()
            self.knob.set(value)
            return self.base, value

    def drop(self, owner: object) -> None:
        with _lock:
            if self.shares.pop(id(owner), None) is None:
                return
            knob, base = self.knob, self.base
            if not self.shares:
                self.knob, self.base = None, None
            try:
                knob.set(base + self.current_raise())
            except Exception as e:  # noqa: BLE001 -- ending a job never fails on it; say so in the log
                log.warning("UnZipLoRA: could not put dynamic VRAM's headroom back to %d bytes (%s: %s)",
                            base, type(e).__name__, e)


HEADROOM = AimdoHeadroom()


def dynamic_headroom_knob(device: torch.device):
    """comfy-aimdo's headroom knob when `device` is a dynamic-VRAM device whose prompts it plans, else None."""
    from ..unziplora import compat

    if not accounts_for(device) or not compat.dynamic_vram_enabled() or not on_main_device(device):
        return None
    return compat.aimdo_headroom()


def _add_to_comfy_reserve(delta: int) -> None:
    mm = _model_management()
    with _lock:
        mm.EXTRA_RESERVED_VRAM = int(mm.EXTRA_RESERVED_VRAM) + int(delta)


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
    headroom: comfy-aimdo's knob (compat.aimdo_headroom()) on a dynamic-VRAM device: the same amount is kept
    there as dynamic VRAM's headroom. None: EXTRA_RESERVED_VRAM only.
    planned: False for a job on another device than ComfyUI's: nothing process-wide is raised for it.
    """

    def __init__(self, device: torch.device, budget: int, held=lambda: 0, headroom=None, planned: bool = True):
        self.device = torch.device(device)
        self.budget = int(budget)
        self.held = held
        self.headroom = headroom
        self.planned = planned
        self.headroom_base = self.headroom_peak = None  # what the knob held before, the most it was set to
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
        if not self.active or not self.planned:
            return 0
        want = max(0, self.budget - int(self.held()))
        _add_to_comfy_reserve(want - self.added)
        self.added = want
        if self.headroom is not None:
            try:
                base, value = HEADROOM.set_share(self, want, self.headroom)
                self.headroom_base = base if self.headroom_base is None else self.headroom_base
                self.headroom_peak = max(value, self.headroom_peak or 0)
            except Exception as e:  # noqa: BLE001 -- the job still runs, planned by EXTRA_RESERVED_VRAM alone
                log.warning("UnZipLoRA: could not raise dynamic VRAM's headroom (%s: %s)", type(e).__name__, e)
                HEADROOM.drop(self)
                self.headroom = None
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
        try:
            if self.added:
                _add_to_comfy_reserve(-self.added)
        finally:
            self.added = 0
            self.active = False
            HEADROOM.drop(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.release()
        return False
