"""The decomposition experiment: for each held-out pair (shape S, style Y), train a pair of LoRAs with the pack
(training.loop.Trainer, training.export.export_run), read the files back (unziplora.pair.from_bundle), put them
on the base model (unziplora.apply.apply_pair, the Apply node's function), encode prompts with the Prompts
node's own code (nodes.prompts.UnZipLoRAPrompts), sample with ComfyUI's sampler and classify.

Probes per run (S', Y' = other shapes / styles):
    content alone  "a sks in Y' style"            shape = S wanted, style = Y' wanted (Y = style leaking)
    style alone    "a S' in Y style"              style = Y wanted, shape = S' wanted (S = content leaking)
    both           "a sks S in Y style" (+ the content / style prompts)           shape = S and style = Y
    crossed        content of run i + style of run i+1 (S_i, Y_j), same prompts   shape = S_i and style = Y_j
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace

import torch

from . import world
from .base import adm

MODES = ("naive", "prompt", "column", "unziplora", "blora")


@dataclass(frozen=True)
class LoraConfig:
    steps: int = 200
    rank: int = 32
    lr: float = 1e-3
    sample_times: int = 3


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 16
    cfg: float = 4.0
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    per_prompt: int = 4  # images per prompt (one batch, seeds differ per image)
    others: int = 2  # how many other shapes / styles the alone-probes use


@dataclass
class Probe:
    kind: str
    images: torch.Tensor  # [B, H, W, 3]
    want_shape: int
    want_style: int
    leak_shape: int | None = None
    leak_style: int | None = None
    prompts: dict = field(default_factory=dict)


class WorldClip:
    """The CLIP surface the Prompts node uses (tokenize, encode_from_tokens_scheduled) over world.WordEncoder;
    entries carry the image size so SDXL's time ids match what the models were trained with."""

    def __init__(self, encoder: world.WordEncoder, size: int):
        self.encoder, self.px = encoder, size * 8

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        tokens, pooled = self.encoder.encode(text)
        return [[tokens, {"pooled_output": pooled, "width": self.px, "height": self.px}]]


def plain_conditioning(clip: WorldClip, text: str):
    return clip.encode_from_tokens_scheduled(text)


def sample(model_patcher, positive, negative, size: int, scfg: SampleConfig, seed: int,
           zero_mean_noise: bool = True, start: torch.Tensor | None = None, denoise: float = 1.0) -> torch.Tensor:
    """[per_prompt, H, W, 3] images from ComfyUI's sampler; from `start` (world latents [per_prompt, 4, H, W]) at
    `denoise` < 1 for a redraw of given images."""
    import comfy.sample

    scale = model_patcher.model.latent_format.scale_factor  # sample() takes and returns latents divided by it
    lat = torch.zeros(scfg.per_prompt, 4, size, size) if start is None else start / scale
    noise = comfy.sample.prepare_noise(lat, seed)
    # Zero-mean start noise (per image and channel). On a 16 x 16 latent the noise's own mean (std 1/16 per channel,
    # x sigma_max 14.6) is as large as the image's, and an epsilon model amplifies any error in it by sigma: sampled
    # from plain noise the base paints random flat colours behind the right shapes (see bench/RESULTS.md). SDXL's
    # 128 x 128 latents have 8x less of it. The LoRAs are trained by the pack as they are, with plain noise.
    if zero_mean_noise:
        noise = noise - noise.mean(dim=(2, 3), keepdim=True)
    out = comfy.sample.sample(model_patcher, noise, scfg.steps, scfg.cfg, scfg.sampler, scfg.scheduler, positive,
                              negative, lat, denoise=denoise, disable_pbar=True, seed=seed)
    return world.to_rgb(out * scale)


def train_pair(base_patcher, encoder, shape: str, style: str, mode: str, lcfg: LoraConfig, size: int, seed: int,
               out_dir: str):
    """Train one run with the pack and read it back from its files: (handle, seconds, final loss)."""
    from unziplora_pack.training.config import TrainConfig
    from unziplora_pack.training.data import LatentPosteriors, PromptStreams
    from unziplora_pack.training.export import export_run
    from unziplora_pack.training.loop import Trainer, TrainInputs
    from unziplora_pack.training.model_copy import private_unet_copy
    from unziplora_pack.training.service import OutputDirs
    from unziplora_pack.unziplora import pair as pairs

    texts = {"prompt": world.prompt(shape, style, trigger=True), "content_prompt": world.prompt(shape, trigger=True),
             "style_prompt": world.prompt(shape, style)}
    (x, pooled), (x_c, _), (x_s, _) = (encoder.encode(texts[k]) for k in ("prompt", "content_prompt", "style_prompt"))
    rgb, _, _ = world.batch([(shape, style)], size, seed=seed + 31)
    latent = world.to_latent(rgb)
    unet, fp = private_unet_copy(base_patcher)
    inputs = TrainInputs(unet=unet, streams=PromptStreams(x, x_c, x_s, pooled),
                         posteriors=LatentPosteriors(latent, torch.zeros_like(latent)),
                         adm=adm(base_patcher, pooled, size).detach(), base_fingerprint=fp, info=dict(texts))
    cfg = TrainConfig(mode=mode, steps=lcfg.steps, rank=lcfg.rank, lr_content=lcfg.lr, lr_style=lcfg.lr,
                      resolution=size * 8, sample_times=min(lcfg.sample_times, lcfg.steps - 1),
                      checkpoint_every=0, seed=seed, precision="fp32", optimizer="adamw")
    t0 = time.time()
    result = Trainer(inputs, cfg).run()
    seconds = time.time() - t0
    dirs = OutputDirs(loras=out_dir, bundles=out_dir, checkpoints=out_dir)
    saved = export_run(result, cfg, dirs, f"{mode}_{shape}_{style}_{seed}", inputs, base_name="separation-base")
    handle = pairs.from_bundle(saved["bundle"])
    final = sum(result.losses[-20:]) / len(result.losses[-20:])
    return handle, seconds, final


def _prompts_node(clip, combined, content, style, content_from, style_from=None):
    """Positive / negative from the Prompts node. A side trained without prompt separation (naive, B-LoRA) read
    the combined prompt in training, so its field is left empty, as a user would: the node then gives it the
    combined prompt."""
    from unziplora_pack.nodes.prompts import UnZipLoRAPrompts

    if not content_from.content.separated:
        content = ""
    if not (style_from or content_from).style.separated:
        style = ""
    return UnZipLoRAPrompts.execute(clip, combined, content, style, "", content_from, style_from).args


def probes_for(base_patcher, clip, handle, other_handle, shape: str, style: str, other: tuple[str, str],
               size: int, scfg: SampleConfig, seed: int) -> list[Probe]:
    from unziplora_pack.unziplora.apply import apply_pair

    s_i, y_i = world.SHAPES.index(shape), world.STYLES.index(style)
    negative = plain_conditioning(clip, "")
    out = []
    other_styles = [y for y in world.STYLES if y != style][: scfg.others]
    other_shapes = [s for s in world.SHAPES if s != shape][: scfg.others]
    content_model = apply_pair(base_patcher, handle, None, "content")
    for k, y2 in enumerate(other_styles):
        text = world.prompt(None, y2, trigger=True)
        imgs = sample(content_model, plain_conditioning(clip, text), negative, size, scfg, seed + k)
        out.append(Probe("content alone", imgs, s_i, world.STYLES.index(y2), leak_style=y_i, prompts={"prompt": text}))
    style_model = apply_pair(base_patcher, handle, None, "style")
    for k, s2 in enumerate(other_shapes):
        text = world.prompt(s2, style)
        imgs = sample(style_model, plain_conditioning(clip, text), negative, size, scfg, seed + 100 + k)
        out.append(Probe("style alone", imgs, world.SHAPES.index(s2), y_i, leak_shape=s_i, prompts={"prompt": text}))
    both = apply_pair(base_patcher, handle, None, "both")
    texts = (world.prompt(shape, style, True), world.prompt(shape, None, True), world.prompt(shape, style))
    pos, neg = _prompts_node(clip, *texts, handle)
    out.append(Probe("both", sample(both, pos, neg, size, scfg, seed + 200), s_i, y_i, prompts=dict(zip(
        ("prompt", "content", "style"), texts))))
    if other_handle is not None:
        shape2, style2 = other
        crossed = apply_pair(base_patcher, handle, other_handle, "both")
        texts = (world.prompt(shape, style2, True), world.prompt(shape, None, True), world.prompt(shape, style2))
        pos, neg = _prompts_node(clip, *texts, handle, other_handle)
        out.append(Probe("crossed", sample(crossed, pos, neg, size, scfg, seed + 300), s_i,
                         world.STYLES.index(style2), leak_style=y_i, leak_shape=world.SHAPES.index(shape2),
                         prompts=dict(zip(("prompt", "content", "style"), texts))))
    return out


def base_probes(base_patcher, clip, shape, style, size, scfg, seed) -> list[Probe]:
    """The same prompts on the base model without LoRAs: what the prompts alone give (the floor)."""
    s_i, y_i = world.SHAPES.index(shape), world.STYLES.index(style)
    negative = plain_conditioning(clip, "")
    out = []
    for k, y2 in enumerate([y for y in world.STYLES if y != style][: scfg.others]):
        text = world.prompt(None, y2, trigger=True)
        out.append(Probe("content alone", sample(base_patcher, plain_conditioning(clip, text), negative, size, scfg,
                                                 seed + k), s_i, world.STYLES.index(y2), leak_style=y_i))
    for k, s2 in enumerate([s for s in world.SHAPES if s != shape][: scfg.others]):
        text = world.prompt(s2, style)
        out.append(Probe("style alone", sample(base_patcher, plain_conditioning(clip, text), negative, size, scfg,
                                               seed + 100 + k), world.SHAPES.index(s2), y_i, leak_shape=s_i))
    text = world.prompt(shape, style, True)
    out.append(Probe("both", sample(base_patcher, plain_conditioning(clip, text), negative, size, scfg, seed + 200),
                     s_i, y_i))
    return out


def composition(base_patcher, clip, models, size, scfg, seed, pairs) -> dict:
    """Base model on 'a S in Y style': how often both factors come out, per pair set."""
    from .classify import predict

    negative = plain_conditioning(clip, "")
    hits, n = 0, 0
    shape_hits, style_hits = 0, 0
    for k, (s, y) in enumerate(pairs):
        imgs = sample(base_patcher, plain_conditioning(clip, world.prompt(s, y)), negative, size, scfg, seed + k)
        ps, py = predict(models, imgs)
        sh, st = ps == world.SHAPES.index(s), py == world.STYLES.index(y)
        hits += int((sh & st).sum())
        shape_hits += int(sh.sum())
        style_hits += int(st.sum())
        n += len(imgs)
    return {"both": hits / n, "shape": shape_hits / n, "style": style_hits / n, "images": n}


def run_all(base_patcher, encoder, models, pairs_used, modes, lcfg, scfg, size, seeds, log=print,
            on_mode_done=None) -> dict:
    """{mode: [probe records]} plus 'base' and timing; on_mode_done(partial result) after each mode."""
    from .classify import predict

    clip = WorldClip(encoder, size)
    records: dict[str, list] = {m: [] for m in ("base", *modes)}
    timing: dict[str, list] = {m: [] for m in modes}

    def record(mode, seed, pair, probes):
        for p in probes:
            ps, py = predict(models, p.images)
            records[mode].append({"kind": p.kind, "seed": seed, "pair": pair, "shape_ok": (ps == p.want_shape).tolist(),
                                  "style_ok": (py == p.want_style).tolist(),
                                  "shape_leak": None if p.leak_shape is None else (ps == p.leak_shape).tolist(),
                                  "style_leak": None if p.leak_style is None else (py == p.leak_style).tolist()})

    for seed in seeds:
        for shape, style in pairs_used:
            record("base", seed, (shape, style), base_probes(base_patcher, clip, shape, style, size, scfg,
                                                             seed * 1000))
    with tempfile.TemporaryDirectory(prefix="separation-") as tmp:
        for mode in modes:
            for seed in seeds:
                handles = []
                for shape, style in pairs_used:
                    h, secs, loss = train_pair(base_patcher, encoder, shape, style, mode, lcfg, size, seed, tmp)
                    handles.append(h)
                    timing[mode].append(secs)
                    log(f"[{mode}] seed {seed} {shape}/{style}: {lcfg.steps} steps in {secs:.1f} s, loss {loss:.4f}")
                n = len(pairs_used)
                for i, (shape, style) in enumerate(pairs_used):
                    j = (i + 1) % n
                    other_h = handles[j] if n > 1 else None
                    probes = probes_for(base_patcher, clip, handles[i], other_h, shape, style, pairs_used[j], size,
                                        scfg, seed * 1000 + 17 * i)
                    record(mode, seed, (shape, style), probes)
            if on_mode_done is not None:
                on_mode_done({"records": {m: r for m, r in records.items() if r}, "timing": timing})
    return {"records": records, "timing": timing}


def replace_cfg(cfg, **kw):
    return replace(cfg, **kw)
