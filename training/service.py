"""Glue between a prepared run and the job manager: names, folders, the job's work, resume.

Folders (under ComfyUI's, resolved by the node layer and passed in):
    loras/unziplora/<name>_content.safetensors, <name>_style.safetensors   (LoraLoader lists them)
    unziplora/<name>.safetensors                                           (the bundle: mergers, masks)
    <output>/unziplora/checkpoints/<job id>/step_NNNNNN.pt                 (resumable state)
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch

from ..unziplora.lora_files import pair_paths
from .config import TrainConfig
from . import checkpoints, faults
from .export import export_run, output_names
from .jobs import JobContext, JobManager, JobRecord
from .loop import Trainer, TrainInputs
from .model_copy import release_copy
from .previews import PreviewRenderer
from .vram import VramReservation


@dataclass(frozen=True)
class OutputDirs:
    loras: str  # e.g. models/loras/unziplora
    bundles: str  # e.g. models/unziplora
    checkpoints: str  # e.g. output/unziplora/checkpoints
    previews: str = ""  # e.g. output/unziplora/previews
    previews_subfolder: str = "unziplora/previews"  # the same, relative to ComfyUI's output folder (for /view)


def default_device() -> torch.device:
    try:
        import comfy.model_management as mm

        return mm.get_torch_device()
    except Exception:
        return torch.device("cpu")


CPU_THREADS_ENV = "UNZIPLORA_CPU_THREADS"


def cpu_training_threads(environ=os.environ) -> int:
    """Intra-op threads for a job that trains on the CPU: UNZIPLORA_CPU_THREADS if set, else all cores but one.

    The job thread shares the machine with ComfyUI's threads, and the prompt thread's OpenMP team (it ran CLIP
    and the VAE) stays alive beside the job's. With every core in the job's team its barriers wait on cores
    held elsewhere: on the 2-core CI machine a 128 px step of the tiny checkpoint took 1.28 s (median, up to
    3.2 s) with 2 threads and 0.91 s with 1 (bench/bench_cpu_threads.py); in the live server 1.2-3.0 s against
    0.9-1.0 s.
    """
    raw = environ.get(CPU_THREADS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{CPU_THREADS_ENV}={raw!r}: must be a whole number of threads, 1 or more")
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def preview_rounds_after(step: int, config: TrainConfig) -> int:
    """Preview rounds still to come after `step` (every preview_every steps, and at the last one)."""
    every, total = config.preview_every, config.steps
    if not every or step >= total:
        return 0
    return (total // every - step // every) + (0 if total % every == 0 else 1)


def preview_round_steps(config: TrainConfig, checkpointing: str = "off") -> float:
    """What one preview round costs in training steps, before one is measured: three images (content, style,
    combined) of preview_steps sampling steps, each two UNet forwards (cond + uncond) at the training resolution,
    against a training step's forward and backward (~3 forwards; ~4 when every block is checkpointed, which runs
    the forward twice). The VAE decodes are left out (small beside the UNet at SDXL sizes)."""
    train_forwards = 4.0 if checkpointing == "all" else 3.0
    return 3 * 2 * config.preview_steps / train_forwards


class TrainingService:
    def __init__(self, manager: JobManager, dirs: OutputDirs, device: torch.device | None = None):
        self.manager = manager
        self.dirs = dirs
        manager.checkpoint_root = manager.checkpoint_root or dirs.checkpoints  # where retention may delete
        self.device = device
        self._names_lock = threading.Lock()

    def reserved_names(self) -> set[str]:
        """Names that queued or running jobs will write: two jobs never pick the same one."""
        return {j.info.get("output_name") for j in self.manager.list() if j.state in ("queued", "running", "cancelling")}

    def start(self, inputs: TrainInputs, config: TrainConfig, name: str, *, resume_prompt: dict | None = None,
              node_id: str | None = None, resume_job: JobRecord | None = None, base_name: str = "",
              workflow_id: str | None = None, device: torch.device | None = None, save_every: int = 0) -> JobRecord:
        """device: where this job trains (Train's device input); None: the service's, else ComfyUI's."""
        config.validate()
        device = torch.device(device) if device is not None else (self.device or default_device())
        # read here, not in the job: a bad UNZIPLORA_CPU_THREADS fails the prompt, on the node, before any job
        cpu_threads = cpu_training_threads() if device.type == "cpu" else None
        with self._names_lock:
            final_name = output_names(self.dirs, name, reserved=self.reserved_names())
            info = dict(inputs.info, output_name=final_name, requested_name=name, mode=config.mode,
                        node_id=node_id, workflow_id=workflow_id, base_model=base_name, config=config.to_json(),
                        cpu_threads=cpu_threads, device=str(device), save_every=int(save_every or 0))
            info["planned_outputs"] = dict(zip(("content", "style", "bundle"),
                                               pair_paths(self.dirs.loras, final_name, self.dirs.bundles)))
            resume_from = resume_job.checkpoint if resume_job else None
            work = self._work(inputs, config, final_name, base_name, resume_from, device)
            job = self.manager.submit(final_name, work, total=config.steps, info=info, resume_prompt=resume_prompt,
                                      resumed_from=resume_job.id if resume_job else None,
                                      step=checkpoints.step_of(resume_from) or 0)
        return job

    def _work(self, inputs: TrainInputs, config: TrainConfig, name: str, base_name: str, resume_from: str | None,
              device: torch.device):
        return TrainingJob(self, inputs, config, name, base_name, resume_from, device)


class TrainingJob:
    """One job's work (JobManager calls it with the job's JobContext), as named steps: use the job's CPU threads,
    build the trainer and the preview renderer, reserve GPU memory, train, give the device back, export.
    Holds the job's private UNet copy: the manager drops it once the job has ended."""

    def __init__(self, service: TrainingService, inputs: TrainInputs, config: TrainConfig, name: str,
                 base_name: str, resume_from: str | None, device: torch.device):
        self.dirs = service.dirs
        self.device = device  # Train's device input, else the service's, else ComfyUI's (decided at start)
        self.inputs, self.config, self.name, self.base_name = inputs, config, name, base_name
        self.resume_from = resume_from

    def __call__(self, ctx: JobContext) -> dict:
        with device_context(self.device):
            return self.run(ctx)

    def run(self, ctx: JobContext) -> dict:
        device = self.device
        self.use_cpu_threads(ctx)
        trainer = Trainer(self.inputs, self.config, device=device,
                          checkpoint_dir=os.path.join(self.dirs.checkpoints, ctx.job.id))
        renderer = self.preview_renderer(ctx, trainer)
        reservation = gpu_reservation(ctx, trainer, self.inputs, self.config)
        try:
            result = self.train(ctx, trainer, renderer, reservation, device)
        finally:
            self.release(ctx, reservation, device)
        return self.export(ctx, result, renderer, device)

    def use_cpu_threads(self, ctx: JobContext) -> None:
        if ctx.job.info.get("cpu_threads"):
            # OpenMP/MKL keep the count per thread: ComfyUI's prompt thread, which has run torch ops before any
            # job starts, keeps its own
            torch.set_num_threads(ctx.job.info["cpu_threads"])

    def preview_renderer(self, ctx: JobContext, trainer: Trainer) -> PreviewRenderer | None:
        inputs, config = self.inputs, self.config
        if inputs.preview is None or not config.preview_every or not self.dirs.previews:
            return None
        renderer = PreviewRenderer(inputs.preview, inputs, config, trainer.objective, trainer.device,
                                   trainer.dtype, os.path.join(self.dirs.previews, ctx.job.id),
                                   f"{self.dirs.previews_subfolder}/{ctx.job.id}",
                                   should_stop=lambda: ctx.stop_requested, on_tick=ctx.preview_tick,
                                   on_done=ctx.preview_done)
        ctx.previews_left = lambda step: preview_rounds_after(step, config)
        ctx.preview_round_steps = preview_round_steps(config, getattr(trainer, "checkpointing", "off"))
        return renderer

    def train(self, ctx: JobContext, trainer: Trainer, renderer, reservation, device):
        first = {}

        def progress(step, total, loss=None):
            if reservation is not None and loss is not None:
                # the first steps set the budget from the measured peak; later ones follow slow growth
                # (a resumed run's first call, loss None, comes before any step: nothing measured yet)
                first.setdefault("step", step - 1)
                if step - first["step"] <= 2 or step % 25 == 0:
                    reservation.measure()
            ctx.progress(step, total, loss)

        return faults.explained(lambda: trainer.run(
            progress=progress, should_stop=lambda: ctx.stop_requested, resume_from=self.resume_from,
            on_checkpoint=ctx.set_checkpoint, previews=renderer,
            on_preview=lambda entries: [ctx.add_preview(e) for e in entries],
            on_step=step_saver(ctx, self.config, self.dirs, self.name, self.inputs, self.base_name)), ctx.job, device)

    def release(self, ctx: JobContext, reservation, device) -> None:
        """However training ended: the GPU reservation goes, the UNet copy leaves the device."""
        if reservation is not None:
            reservation.release()
            ctx.job.info.update(gpu_peak_allocated=reservation.peak_allocated,
                                gpu_peak_reserved=reservation.peak_reserved)
            if reservation.headroom is not None:  # dynamic VRAM's headroom: before, raised to, after
                ctx.job.info.update(gpu_headroom_base=reservation.headroom_base,
                                    gpu_headroom_peak=reservation.headroom_peak,
                                    gpu_headroom_after=reservation.headroom.get())
        # the copy is not needed past training (export reads the LoRA pair only): free it now, wherever it is.
        # On a card a move back to the CPU would be a full host copy; on the CPU it is 5 GB at full size that a
        # resume queued the moment this job ends would otherwise find still taken (and be refused)
        release_copy(self.inputs.unet)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the job thread's current device is the job's (device_context)

    def export(self, ctx: JobContext, result, renderer, device) -> dict:
        """The files, under the name the job was given when it started (never another one)."""
        return faults.export_explained(
            lambda: export_run(result, self.config, self.dirs, self.name, self.inputs, base_name=self.base_name,
                               started_at=ctx.job.started, preview_dir=renderer.out_dir if renderer else None,
                               name_decided=True),
            ctx.job, device)


def device_context(device: torch.device):
    """The job thread's current CUDA device is the job's own (kernels and caches that use the current device,
    torch.cuda.empty_cache among them, then act on it); the prompt thread keeps its own."""
    import contextlib

    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def step_saver(ctx: JobContext, config: TrainConfig, dirs: OutputDirs, name: str, inputs: TrainInputs,
               base_name: str):
    """on_step for Trainer.run: every info.save_every steps (not the last: that is the run's own files) the LoRAs
    as they are, as <name>_stepNNNNNN (content, style, bundle: the loaders list them), recorded in
    info.step_files {step: {content, style, bundle}} for the panel's "use this step" and the retention."""
    every = int(ctx.job.info.get("save_every") or 0)
    if every <= 0:
        return None

    def save(step: int, lora) -> None:
        if step % every or step >= config.steps:
            return
        from .loop import RunResult

        files = export_run(RunResult(lora, None, step, []), config, dirs, f"{name}_step{step:06d}", inputs,
                           base_name=base_name, started_at=ctx.job.started)
        ctx.add_step_files(step, files)

    return save


def gpu_reservation(ctx: JobContext, trainer: Trainer, inputs: TrainInputs, config: TrainConfig):
    """The job's GPU memory, accounted in ComfyUI's planning until released (training/vram.py); None on the CPU.
    Raises, before anything is moved to the GPU, when the card cannot hold the weights; says on the job
    (info.gpu_warning, shown on the panel) when the estimated peak does not fit, or leaves no room for a prompt."""
    from . import vram

    if not vram.accounts_for(trainer.device):
        return None
    # the mode the loop applies (selective checkpoints the deep blocks: planned as such, not as "off")
    budget = vram.estimate_job_bytes(inputs.unet, config.resolution, trainer.dtype, trainer.checkpointing, config.rank)
    error, warning = vram.fit_message(budget, vram.device_total(trainer.device),
                                      floor=vram.weight_bytes(inputs.unet, trainer.dtype))
    if error:
        raise MemoryError(error)
    ctx.job.info.update(gpu_estimate=budget, gpu_warning=warning)
    planned = vram.on_main_device(trainer.device)  # the reserve and the headroom are process-wide
    headroom = vram.dynamic_headroom_knob(trainer.device) if planned else None
    reservation = VramReservation(trainer.device, budget, held=lambda: vram.tensor_bytes_on(inputs.unet, trainer.device),
                                  headroom=headroom, planned=planned).start()
    ctx.job.info.update(gpu_reserved=reservation.added, gpu_headroom=headroom.source if headroom else None)
    return reservation
