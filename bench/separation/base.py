"""The base text-to-image model of the world: ComfyUI's SDXL UNet (comfy.model_base.SDXL, the same block names
and attention layout as SDXL: transformers in input_blocks 4, 5, 7, 8, middle_block 1 and output_blocks 0-5) at
small widths, trained from scratch with the pack's objective (DDPM epsilon MSE, SDXL's scaled-linear betas).

Prompts: the world's captions ("a star in stripes style", also "a star", "a ... in stripes style" and "" for
classifier-free guidance), encoded by world.WordEncoder. Held-out pairs never appear together in a caption.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import world
from .env import setup

UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 16,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 1, 1],
    "channel_mult": [1, 2, 2],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 32,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


@dataclass(frozen=True)
class BaseConfig:
    size: int = 16  # image = latent side, pixels
    model_channels: int = 32
    steps: int = 1000
    batch: int = 24
    lr: float = 8e-4
    seed: int = 0
    drop_shape: float = 0.1  # caption without the shape word
    drop_style: float = 0.1  # caption without the style
    drop_all: float = 0.1  # empty caption (the unconditional branch of CFG)
    tokens: int = 8  # context length (world.WordEncoder)
    stop_at: int = 0  # stop after this many steps of the `steps`-long schedule (0 = run it all)
    world: str = "named"  # "named" (world.py) or "unnamed" (unnamed.py)
    # attention at full resolution too (input_blocks 1-2, output_blocks 6-8), where 2-4 pixel textures live. SDXL has
    # none there; tried for the unnamed world and dropped: the pack's LoRA reader refuses files for such layers (it
    # maps SDXL's places only), so the benchmark keeps SDXL's layout (attention at 8x8 and 4x4 here)
    top_attention: bool = False
    world_version: int = 1  # unnamed.VERSION of the renders it was trained on

    def key(self) -> str:
        # fields added later enter the key only when set, so older caches keep their names
        late = {"world": "named", "top_attention": False, "world_version": 1}
        return "base_" + "_".join(f"{k}{v}" for k, v in asdict(self).items() if late.get(k, object()) != v)


def world_module(name: str):
    from . import unnamed

    return {"named": world, "unnamed": unnamed}[name]


def unet_config(cfg: BaseConfig) -> dict:
    out = {**UNET_CONFIG, "model_channels": cfg.model_channels, "image_size": cfg.size}
    if cfg.top_attention:
        out.update(transformer_depth=[1, 1, 1, 1, 1, 1], transformer_depth_output=[1] * 9)
    return out


def _init(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip torch's init: torch's default init, seeded, norms 1/0, the output conv zero."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    torch.nn.init.zeros_(module.out[-1].weight)


def build_model(cfg: BaseConfig, state_dict: dict | None = None):
    """A ModelPatcher around comfy.model_base.SDXL with the world's UNet (CPU, fp32)."""
    setup()
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(unet_config(cfg))
    if cfg.top_attention:  # one head per transformer (64 wide as before; 32 at full resolution, where 64-wide heads leave none)
        config.unet_config.update(num_heads=1, num_head_channels=-1)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    unet = model.diffusion_model
    if state_dict is None:
        _init(unet, cfg.seed)
    else:
        unet.load_state_dict(state_dict)
    unet.float()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def adm(model_patcher, pooled: torch.Tensor, size: int) -> torch.Tensor:
    """SDXL's y: pooled + time ids, the image size in pixels as the time ids (a latent pixel is a pixel here)."""
    px = size * 8  # ComfyUI's conditioning speaks in image pixels = 8 x latent
    return model_patcher.model.encode_adm(pooled_output=pooled, width=px, height=px, crop_w=0, crop_h=0,
                                          target_width=px, target_height=px)


def denoise_loss(patcher, alphas: torch.Tensor, x0, t, noise, ctx, pooled, size: int) -> torch.Tensor:
    """The base's objective on one batch: epsilon MSE at DDPM timesteps t (alphas: the cumulative products)."""
    a = alphas[t].view(-1, 1, 1, 1)
    eps = patcher.model.diffusion_model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), context=ctx,
                                        y=adm(patcher, pooled, size))
    return F.mse_loss(eps, noise)


def captions(pairs, rng: torch.Generator, cfg: BaseConfig) -> list[str]:
    w = world_module(cfg.world)
    to_words = getattr(w, "words", lambda s, y: (s, y))
    out = []
    for pair in pairs:
        shape, style = to_words(*pair)
        r = float(torch.rand((), generator=rng))
        if r < cfg.drop_all:
            out.append("")
        elif r < cfg.drop_all + cfg.drop_shape:
            out.append(world.prompt(None, style))
        elif r < cfg.drop_all + cfg.drop_shape + cfg.drop_style:
            out.append(world.prompt(shape, None))
        else:
            out.append(world.prompt(shape, style))
    return out


def train_base(cfg: BaseConfig, encoder: world.WordEncoder, log=print, on_checkpoint=None, resume: dict | None = None,
               budget_s: float | None = None):
    """Train from scratch (or from `resume`, a state on_checkpoint was given); returns (model patcher, info dict).

    Every batch is seeded by its step number, so a resumed run sees the same data as an uninterrupted one.
    budget_s: stop after this many seconds of this call, checkpoint, and return (None, None) (a shared machine's
    lock is then free for others before the next chunk)."""
    setup()
    from unziplora_pack.training.loop import ddpm_alphas_cumprod

    w = world_module(cfg.world)
    patcher = build_model(cfg)
    unet = patcher.model.diffusion_model
    unet.train()
    unet.requires_grad_(True)  # ComfyUI 0.33 builds its models frozen (0.3.75 left them trainable)
    alphas = ddpm_alphas_cumprod().float()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warmup = max(1, cfg.steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))) * 0.95 + 0.05)
    rng = torch.Generator().manual_seed(cfg.seed)
    cache: dict[str, tuple] = {}
    t0, losses, first, spent = time.time(), [], 0, 0.0
    if resume is not None:
        unet.load_state_dict(resume["unet"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        rng.set_state(resume["rng"])
        losses, first, spent = list(resume["losses"]), int(resume["step"]), float(resume["seconds"])
        t0 -= spent
        log(f"[base] resumed at step {first}")
    step = first - 1
    started = time.time()
    for step in range(first, cfg.stop_at or cfg.steps):
        pairs = w.random_pairs(cfg.batch, seed=cfg.seed * 1_000_003 + step, pairs=w.TRAIN_PAIRS,
                               weights=w.TRAIN_WEIGHTS)
        rgb, _, _ = w.batch(pairs, cfg.size, seed=cfg.seed * 7_000_001 + step)
        x0 = world.to_latent(rgb)
        texts = captions(pairs, rng, cfg)
        for t in texts:
            if t not in cache:
                cache[t] = encoder.encode(t)
        ctx = torch.cat([cache[t][0] for t in texts])
        pooled = torch.cat([cache[t][1] for t in texts])
        t = torch.randint(0, 1000, (cfg.batch,), generator=rng)
        noise = torch.randn(x0.shape, generator=rng)
        loss = denoise_loss(patcher, alphas, x0, t, noise, ctx, pooled, cfg.size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, min(50, cfg.steps // 20)) == 0 or step + 1 == cfg.steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            log(f"[base] step {step + 1}/{cfg.steps} loss {recent:.4f} ({time.time() - t0:.0f} s)")
        out_of_time = budget_s is not None and time.time() - started > budget_s and step + 1 < (cfg.stop_at or cfg.steps)
        if on_checkpoint is not None and ((step + 1) % 250 == 0 or out_of_time):
            on_checkpoint(step + 1, unet, {"opt": opt.state_dict(), "sched": sched.state_dict(),
                                           "rng": rng.get_state(), "losses": losses, "step": step + 1,
                                           "seconds": time.time() - t0})
        if out_of_time:
            log(f"[base] paused at step {step + 1} (budget {budget_s:.0f} s); run again to continue")
            return None, None
    unet.eval()
    info = {"steps": step + 1, "seconds": round(time.time() - t0, 1), "final_loss": round(
        sum(losses[-100:]) / len(losses[-100:]), 4), "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2)}
    return patcher, info


def load_cached(cfg: BaseConfig, cache):
    """The cached base for cfg, for the diagnostics that read it (they never train one)."""
    from safetensors.torch import load_file

    path = cache / f"{cfg.key()}.safetensors"
    if not path.exists():
        raise SystemExit(f"no trained base at {path}: train it first with "
                         "`.venv/bin/python -m bench.separation.base_chunk` (add --preset for another preset's base)")
    return build_model(cfg, load_file(str(path)))


def load_or_train(cfg: BaseConfig, encoder: world.WordEncoder, cache, log=print, budget_s: float | None = None):
    """The cached base model for cfg (trained and saved when missing; (None, None) if budget_s ran out first)."""
    from safetensors.torch import save_file

    path = cache / f"{cfg.key()}.safetensors"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return load_cached(cfg, cache), json.loads(meta.read_text())
    cache.mkdir(parents=True, exist_ok=True)

    state_file = path.with_name(f"{path.stem}.resume.pt")

    def partial(step, unet, state):  # a long run can be inspected (or used) before it ends, and resumed
        sd = {k: v.detach().contiguous().clone() for k, v in unet.state_dict().items()}
        save_file(sd, str(path.with_name(f"{path.stem}.partial.safetensors")), metadata={"step": str(step)})
        tmp = state_file.with_suffix(".tmp")
        torch.save({**state, "unet": sd}, tmp)
        tmp.replace(state_file)

    resume = torch.load(state_file, weights_only=False) if state_file.exists() else None
    patcher, info = train_base(cfg, encoder, log, on_checkpoint=partial, resume=resume, budget_s=budget_s)
    if patcher is None:
        return None, None
    sd = {k: v.detach().contiguous() for k, v in patcher.model.diffusion_model.state_dict().items()}
    save_file(sd, str(path))
    meta.write_text(json.dumps(info))
    state_file.unlink(missing_ok=True)
    return patcher, info
