"""The UnZipLoRA optimisation loop (method.md "Loss and optimisation"), resumable from checkpoints.

One step: random latent crop + fresh posterior sample, t ~ U{0..999}, DDPM noising over the model's own sigmas,
MSE toward the model's own target (eps or v, objective.py; the paper's SDXL is eps) (+ L_orth while masks are on), backward, the column schedule, grad-norm clip,
AdamW, merger clamp. All randomness comes from one CPU generator whose state is checkpointed, so a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..unziplora.checkpointing import apply_mode, checkpointing_mode
from ..unziplora.content_style import ContentStyleLoRA
from ..unziplora.kv_patch import predict_eps
from ..unziplora.roles import get_mode
from ..unziplora.schedule import ColumnSchedule, orth_loss
from . import checkpoints
from .adamw_bf16 import AdamWBF16
from .config import TrainConfig
from .data import LatentPosteriors, PromptStreams
from .objective import Objective, ddpm_alphas_cumprod, describe_state, sdxl_default  # noqa: F401 (re-export)



@dataclass
class TrainInputs:
    """Everything a run needs, prepared before it starts (text encoders and VAE already released)."""

    unet: torch.nn.Module  # a private copy of the diffusion model, never registered with ComfyUI
    streams: PromptStreams
    posteriors: LatentPosteriors
    adm: torch.Tensor  # the UNet's y vector: pooled of the combined prompt + time ids
    base_fingerprint: str = ""
    info: dict = field(default_factory=dict)
    preview: object | None = None  # previews.PreviewInputs when previews were asked for
    thumbnail: object | None = None  # the first training image, small (uint8 HxWx3): the files' fallback thumbnail
    objective: Objective | None = None  # the model's target and schedule (objective.from_model); None: SDXL's eps


@dataclass
class TrainState:
    """What one run carries from step to step; a checkpoint is this state at a step (checkpoints.py)."""

    unet: torch.nn.Module
    lora: ContentStyleLoRA
    optimizer: torch.optim.Optimizer
    schedule: ColumnSchedule
    scaler: object | None  # torch.amp.GradScaler for fp16, else None
    gen: torch.Generator  # the run's one CPU generator: every random draw, checkpointed
    streams: PromptStreams  # on the device, in the compute dtype
    step: int = 0  # optimiser steps finished
    params: list = field(default_factory=list)  # every trained parameter (clipping)


@dataclass
class RunResult:
    lora: ContentStyleLoRA
    schedule: ColumnSchedule
    steps_done: int
    losses: list


def pick_precision(config: TrainConfig, device: torch.device,
                   weight_dtype: torch.dtype | None = None) -> tuple[torch.dtype, bool]:
    """(compute dtype, use a loss scaler). bf16 autocast where supported, fp16 + scaling on other GPUs.

    On the CPU: bf16 when asked for, or on auto when the model's weights are bf16 already (ComfyUI
    --bf16-unet); fp32 otherwise. The frozen UNet is held in the compute dtype, so fp32 on a bf16 model would
    double its host RAM (full-size SDXL: 5.1 -> 10.3 GB), which is what killed the first full-size CPU run."""
    if config.precision == "fp32":
        return torch.float32, False
    if device.type == "cpu":
        if config.precision == "bf16" or (config.precision == "auto" and weight_dtype == torch.bfloat16):
            return torch.bfloat16, False
        return torch.float32, False
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    if device.type == "cuda":
        return torch.float16, True
    return torch.float32, False


def make_optimizer(lora: ContentStyleLoRA, config: TrainConfig, device: torch.device):
    groups = lora.parameter_groups()
    param_groups = [
        {"params": groups["content"], "lr": config.lr_content, "name": "content"},
        {"params": groups["style"], "lr": config.lr_style, "name": "style"},
        {"params": groups["mergers"], "lr": config.lr_merger, "name": "mergers"},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    kwargs = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay)
    want_8bit = config.optimizer in ("adamw8bit", "low_memory") or (config.optimizer == "auto" and device.type == "cuda")
    if want_8bit and device.type == "cuda":
        try:
            import bitsandbytes as bnb  # optional: never required

            return bnb.optim.AdamW8bit(param_groups, **kwargs), "adamw8bit"
        except ImportError:
            if config.optimizer == "adamw8bit":
                raise ValueError("optimizer = 'adamw8bit' needs the bitsandbytes package; install it or use 'adamw'")
    if config.optimizer in ("adamw_bf16", "low_memory"):
        # half of AdamW's state without any extra package (training/adamw_bf16.py)
        return AdamWBF16(param_groups, **kwargs, seed=config.seed), "adamw_bf16"
    # CUDA: one fused kernel family for all factors; elsewhere the multi-tensor (foreach) path. Same maths.
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups, **kwargs, **impl), "adamw"


def weight_dtype_of(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype most of a module's floating-point weight bytes are stored in (None: no such weights)."""
    sizes: dict = {}
    for p in module.parameters():
        if p.is_floating_point():
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    return max(sizes, key=sizes.get) if sizes else None


def move_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """module.to(device, dtype) unless every tensor is there already: a no-op .to() still rewrites each
    parameter's .data, which fake tensors (bench/bench_memory.py) refuse."""
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.device != device or (dtype is not None and t.is_floating_point() and t.dtype != dtype) for t in tensors):
        module.to(device=device, dtype=dtype)


class LossReader:
    """Reads step losses without stalling the GPU: each loss is copied into pinned host memory asynchronously
    and read once its copy is done (one step later, typically). On the CPU a read costs nothing, so it is
    immediate. The check for a non-finite loss happens on the value read, i.e. without a sync of its own."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list = []  # (step, host tensor, event)

    def push(self, step: int, loss: torch.Tensor) -> list[tuple[int, float]]:
        if not self.cuda:
            return [(step, _finite(step, float(loss)))]
        host = torch.empty((), dtype=torch.float32, pin_memory=True)
        host.copy_(loss.detach().float(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((step, host, event))
        return self.poll()

    def poll(self, wait: bool = False) -> list[tuple[int, float]]:
        ready = []
        while self.pending and (wait or self.pending[0][2].query()):
            step, host, event = self.pending.pop(0)
            event.synchronize()
            ready.append((step, _finite(step, float(host))))
        return ready


def _finite(step: int, value: float) -> float:
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss became {value} at step {step}: lower the learning rates "
                                 "or use precision fp32/bf16")
    return value


class Trainer:
    def __init__(self, inputs: TrainInputs, config: TrainConfig, device: torch.device | str = "cpu",
                 checkpoint_dir: str | None = None):
        self.inputs = inputs
        self.config = config.validate()
        self.device = torch.device(device)
        self.checkpoint_dir = checkpoint_dir
        self.mode = get_mode(config.mode)
        self.dtype, self.use_scaler = pick_precision(self.config, self.device, weight_dtype_of(inputs.unet))
        self.objective = inputs.objective or sdxl_default()
        # what is checkpointed (all / deep / off): decided once, the VRAM estimate plans with the same value
        self.checkpointing = checkpointing_mode(self.config.gradient_checkpointing, self.device)
        # step factors per group of alike linears (ContentStyleLoRA.step_factors); False for A/B benchmarks
        self.group_step_factors = True

    # ---- set-up -----------------------------------------------------------------------------------------
    def _setup(self) -> TrainState:
        cfg = self.config
        unet = self.inputs.unet
        unet.requires_grad_(False)
        move_module(unet, self.device, self.dtype)
        unet.dtype = self.dtype  # ComfyUI's UNetModel casts its input to this attribute
        gen = torch.Generator().manual_seed(cfg.seed)
        lora = ContentStyleLoRA(unet, self.mode, rank=cfg.rank, generator=gen)
        move_module(lora, self.device)
        lora.attach(unet)
        apply_mode(unet, self.checkpointing)
        optimizer, self.optimizer_name = make_optimizer(lora, cfg, self.device)
        schedule = ColumnSchedule(lora, cfg.steps, sample_times=cfg.sample_times, column_ratio=cfg.column_ratio,
                                  threshold=cfg.score_threshold)
        scaler = torch.amp.GradScaler("cuda") if self.use_scaler else None
        streams = self.inputs.streams.to(self.device, self.dtype)
        self._adm = self.inputs.adm.to(self.device)  # once, not a host copy per step
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return TrainState(unet, lora, optimizer, schedule, scaler, gen, streams, params=params)

    # ---- one step ---------------------------------------------------------------------------------------
    def _loss(self, unet, lora, streams: PromptStreams, gen: torch.Generator, schedule) -> torch.Tensor:
        latent_size = self.config.resolution // 8
        x0 = self.inputs.posteriors.sample_crop(latent_size, gen)
        t = int(torch.randint(0, self.objective.num_timesteps, (1,), generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        xt, target = self.objective.noised(x0, noise, t)
        if self.device.type == "cuda":
            # drawn on the CPU (the checkpointed generator); one pinned, asynchronous copy for both
            both = torch.stack([xt, target]).pin_memory().to(self.device, non_blocking=True)
            xt, target = both[0], both[1]
        xt = xt.to(self.device, self.dtype)
        target = target.to(self.device)
        timesteps = torch.full((1,), float(t), device=self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32
                    else contextlib.nullcontext())
        separate = self.mode.prompt_separation  # naive / B-LoRA: both LoRAs read the combined prompt
        with autocast:
            out = predict_eps(unet, lora, xt, timesteps, streams.x, self._adm,
                              content=streams.x_c if separate else None, style=streams.x_s if separate else None)
        loss = F.mse_loss(out.float(), target)
        if schedule.orth_active:
            loss = loss + orth_loss(lora, self.config.orth_lambda)
        return loss

    def step(self, state: TrainState, reader=None) -> torch.Tensor:
        """One optimiser step (state.step: steps finished so far, counted up here); returns the loss, unread: no
        host sync in here (on the CPU the reader checks the loss before backward, as reading costs nothing there)."""
        g, lora, optimizer, schedule, scaler = state.step, state.lora, state.optimizer, state.schedule, state.scaler
        unet, gen, streams, params = state.unet, state.gen, state.streams, state.params
        with lora.step_factors(self.device, self.dtype, grouped=self.group_step_factors):
            loss = self._loss(unet, lora, streams, gen, schedule)
            if reader is not None and not reader.cuda:
                _finite(g + 1, float(loss.detach()))
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        schedule.before_optimizer_step(g)
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip, foreach=True)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        schedule.after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        state.step = g + 1
        return loss.detach()

    def run(self, progress: Callable[[int, int, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None, resume_from: str | None = None,
            on_checkpoint: Callable[[str], None] | None = None, previews=None,
            on_preview: Callable[[list], None] | None = None,
            on_step: Callable[[int, object], None] | None = None) -> RunResult:
        """previews: a previews.PreviewRenderer, called every config.preview_every steps. on_step(step, lora):
        after every step's losses and previews (the service saves the LoRAs of chosen steps there)."""
        cfg = self.config
        state = self._setup()
        if resume_from:
            self._load_checkpoint(resume_from, state)
            if progress:
                progress(state.step, cfg.steps, None)  # the UI shows where the run picks up, not 0
        reader = LossReader(self.device)
        losses = []
        while state.step < cfg.steps:
            if should_stop is not None and should_stop():
                for step, value in reader.poll(wait=True):
                    losses.append(value)
                    if progress:
                        progress(step, cfg.steps, value)
                path = self.save_checkpoint(state)
                if on_checkpoint:
                    on_checkpoint(path)
                from .jobs import JobCancelled

                raise JobCancelled()
            loss = self.step(state, reader)
            g = state.step
            read = reader.push(g, loss)
            if (cfg.checkpoint_every and g % cfg.checkpoint_every == 0) or g == cfg.steps or (
                    previews is not None and cfg.preview_every and g % cfg.preview_every == 0):
                read += reader.poll(wait=True)  # what follows reads the LoRA, or the run ends: settle losses
            for step, value in read:
                losses.append(value)
                if progress:
                    progress(step, cfg.steps, value)
            if previews is not None and cfg.preview_every and (g % cfg.preview_every == 0 or g == cfg.steps):
                entries = previews.render(state.unet, state.lora, g, self.mode.prompt_separation)
                if on_preview:
                    on_preview(entries)
            if on_step is not None:
                on_step(g, state.lora)
            if cfg.checkpoint_every and g % cfg.checkpoint_every == 0 and g < cfg.steps:
                path = self.save_checkpoint(state)
                if on_checkpoint:
                    on_checkpoint(path)
        state.schedule.finish()
        state.lora.detach()
        return RunResult(state.lora, state.schedule, state.step, losses)

    # ---- checkpoints (the format: checkpoints.py) -------------------------------------------------------
    def save_checkpoint(self, state: TrainState) -> str:
        if not self.checkpoint_dir:
            raise ValueError("no checkpoint directory was given")
        return checkpoints.save(self.checkpoint_dir, state.step, {
            "config": self.config.to_json(),
            "base_fingerprint": self.inputs.base_fingerprint,
            "objective": self.objective.state(),
            "lora": {k: v.detach().cpu() for k, v in state.lora.state_dict().items()},
            "schedule": state.schedule.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "optimizer_name": self.optimizer_name,
            "scaler": state.scaler.state_dict() if state.scaler else None,
            "generator": state.gen.get_state(),
        })

    def _load_checkpoint(self, path: str, state: TrainState) -> None:
        saved_state = checkpoints.load(path)
        saved = TrainConfig.from_dict(json.loads(saved_state["config"]))
        if saved != self.config:
            diff = [k for k in saved.__dataclass_fields__ if getattr(saved, k) != getattr(self.config, k)]
            raise ValueError(f"checkpoint {path} was made with other settings ({', '.join(diff)}): "
                             "resume with the same settings")
        if self.inputs.base_fingerprint and saved_state["base_fingerprint"] not in ("", self.inputs.base_fingerprint):
            raise ValueError(f"checkpoint {path} was trained on another base model: resume with the same model")
        if saved_state.get("objective", self.objective.state()) != self.objective.state():
            raise ValueError(f"checkpoint {path} was trained for {describe_state(saved_state['objective'])}, this "
                             f"model uses {self.objective.describe()}: resume with the same model sampling")
        state.lora.load_state_dict(saved_state["lora"])
        state.schedule.load_state_dict(saved_state["schedule"])
        state.optimizer.load_state_dict(saved_state["optimizer"])
        if state.scaler and saved_state.get("scaler"):
            state.scaler.load_state_dict(saved_state["scaler"])
        state.gen.set_state(saved_state["generator"])
        state.step = int(saved_state["step"])
