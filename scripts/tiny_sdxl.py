#!/usr/bin/env python
"""A random-weight, SDXL-architecture checkpoint small enough for CPU tests, that stock ComfyUI loads as SDXL.

    python scripts/tiny_sdxl.py                      # -> ${UNZIPLORA_CACHE:-~/.cache/unziplora-dev}/models
    python scripts/tiny_sdxl.py --out DIR --verify   # also load it back and sample 128 px on the CPU
    python scripts/tiny_sdxl.py --size full --device cuda --out DIR   # SDXL's own size (2.57 B UNet, ~6.5 GiB)

From Python: ``ensure_tiny_checkpoint(cache_dir=None) -> Path`` (generates in a subprocess when missing),
``ensure_checkpoint("full", cache_dir, device)`` for the full-size one, ``build_state_dict(size, device)``
for the tensors themselves (``device="meta"``: every key and shape, no memory, in a second).

What is in the file (`tiny_sdxl.safetensors`, fp16, ~2.1 GB):
- UNet: SDXL's detection-relevant config (model_channels 320, input transformer depths [0,0,2,2,10,10],
  context_dim 2048, adm_in_channels 2816, linear proj_in/out) but channel_mult [1,1,1] and one transformer
  block in the middle block and in each of output_blocks 0-5 (ComfyUI reads ``transformer_depth_output``
  from the end of the list). ComfyUI's checkpoint detection only looks at the input side, so the stock
  CheckpointLoaderSimple picks ``comfy.model_base.SDXL``. ~160 M parameters.
- Text encoders: full-size CLIP-L and CLIP-G (the stock loader builds them at full size from its own
  config, so smaller ones would leave uninitialised weights).
- VAE: the SDXL VAE architecture.
All weights are random with a fixed seed and explicitly initialised (ComfyUI's ops skip torch's init):
matrices/convs normal(0, 0.02), biases 0, norms weight 1 / bias 0, the UNet's final conv with a small std.

The full size (``--size full``) is the same generator with SDXL base's UNet config (channel_mult [1,2,4],
depth 10 in the middle block, output depths [0,0,0,2,2,2,10,10,10]): what bench/gpu_check.py and the
full-size CPU run load.

The safetensors metadata key ``unziplora.tiny`` holds a hash of the configuration and of the source of the
code that makes the tensors (config_hash()): a file with the same hash is reused, anything else is regenerated,
so a change to what the file holds also changes its cache key.

The state dict is put together from the model config's three ``process_*_state_dict_for_saving`` helpers,
which are the same on every ComfyUI the pack supports. ``BaseModel.state_dict_for_saving`` is not: 0.3.75
takes (clip, vae) and reads the UNet itself, 0.33.0 takes (unet, clip, vae) -- called the 0.3.75 way on 0.33.0
it saved CLIP under ``model.diffusion_model.`` and dropped the UNet and the VAE (717 keys, "Could not detect
model type").
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILENAME = "tiny_sdxl.safetensors"
METADATA_KEY = "unziplora.tiny"
GENERATOR_VERSION = 2
SEED = 20240501
STD = 0.02
OUT_STD = 0.002  # the UNet's final conv: keeps eps predictions small so sampling stays finite

# SDXL base's own UNet (2,567,463,684 parameters): what the full-size checkpoint holds
FULL_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
# the tiny checkpoint: SDXL base with one width and one transformer block where SDXL has 2 or 10 (outputs 0-5)
UNET_CONFIG = dict(FULL_UNET_CONFIG, channel_mult=[1, 1, 1], transformer_depth_middle=1,
                   transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])
# the in-process unit tests' UNet (tests/tiny_models.py): narrower still, one block per attention level
TEST_UNET_CONFIG = dict(FULL_UNET_CONFIG, model_channels=64, channel_mult=[1, 2, 2], transformer_depth=[0, 0, 1, 1, 1, 1],
                        transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
                        num_head_channels=32)
SIZES = {"tiny": UNET_CONFIG, "full": FULL_UNET_CONFIG}
FILENAMES = {"tiny": FILENAME, "full": "sdxl_random_full.safetensors"}

VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def unet_config(size: str = "tiny") -> dict:
    if size not in SIZES:
        raise ValueError(f"size {size!r}: allowed are {', '.join(SIZES)}")
    return dict(SIZES[size])


def _content_source() -> str:
    """The source of the functions that decide which tensors the file holds and their values: editing any of
    them changes config_hash(), so a cached file made by older code is never taken for a current one."""
    return "".join(inspect.getsource(f) for f in (init_module_, build_state_dict, _random_models))


def config_hash(size: str = "tiny") -> str:
    """Hash of everything that determines the file's contents (configuration and generating code)."""
    spec = {
        "generator": GENERATOR_VERSION,
        "code": hashlib.sha256(_content_source().encode()).hexdigest(),
        "seed": SEED,
        "std": STD,
        "out_std": OUT_STD,
        "unet": unet_config(size),
        "vae": VAE_DDCONFIG,
        "clip": "sdxl-clip-l+clip-g-full",
        "dtype": "float16",
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("UNZIPLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unziplora-dev"
    )
    return Path(base) / "models"


def comfy_dir() -> Path:
    """ComfyUI's directory (scripts/dev_env.py says how it is found)."""
    return _dev_env().comfy_dir()


def _dev_env():
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.append(str(Path(__file__).resolve().parent))
    import dev_env

    return dev_env


def file_hash(path: Path) -> str | None:
    """The ``unziplora.tiny`` metadata of a safetensors file (reads only the header), None if absent/invalid."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                return None
            header = json.loads(f.read(n))
        return (header.get("__metadata__") or {}).get(METADATA_KEY)
    except (OSError, ValueError):
        return None


def is_current(path: Path, size: str = "tiny") -> bool:
    return path.is_file() and file_hash(path) == config_hash(size)


# ---------------------------------------------------------------------------------------------- generation


def _comfy_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def file_metadata(path: Path) -> dict:
    """A safetensors file's __metadata__ (header only)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)).get("__metadata__") or {}


def _import_comfy(comfy: Path | None = None):
    """Put ComfyUI on sys.path and make it run on the CPU when it has not been imported yet."""
    try:
        _dev_env().use_comfyui(comfy, cpu=True)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None


def init_module_(module, generator, std: float = STD) -> None:
    """Give every parameter a defined value: norms 1/0, biases 0, everything else normal(0, std). The random
    numbers are drawn on the generator's device (a CUDA generator fills a full-size UNet in seconds)."""
    import torch

    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        for mod_name, mod in module.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, norm_types):
                    p.fill_(1.0 if p_name == "weight" else 0.0)
                elif p_name == "logit_scale":
                    p.fill_(math.log(100.0))
                elif p.ndim <= 1:
                    p.zero_()
                else:
                    s = std * 0.5 if "position_embedding" in mod_name else std
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32,
                                        device=generator.device) * s)


def _random_models(size: str, device):
    """(model config, SDXL BaseModel, SDXLClipModel, AutoencoderKL) with seeded weights on `device`; on "meta"
    the same modules without storage (their keys and shapes only)."""
    import torch

    import comfy.ldm.models.autoencoder
    import comfy.sdxl_clip
    import comfy.supported_models

    device = torch.device(device)
    meta = device.type == "meta"
    g = None if meta else torch.Generator(device=device).manual_seed(SEED)

    model_config = comfy.supported_models.SDXL(unet_config(size))
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({}, device=device)
    clip = comfy.sdxl_clip.SDXLClipModel(device=device, dtype=torch.float16)
    with torch.device(device):
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
    if not meta:
        init_module_(model.diffusion_model, g)
        with torch.no_grad():
            out_conv = model.diffusion_model.out[2]
            out_conv.weight.copy_(torch.randn(out_conv.weight.shape, generator=g, device=device) * OUT_STD)
        init_module_(clip, g)
        init_module_(vae, g)
    return model_config, model, clip, vae


def build_state_dict(size: str = "tiny", device="cpu"):
    """The full checkpoint state dict (original SDXL key layout: model.diffusion_model., conditioner.embedders.,
    first_stage_model.), fp16, deterministic for a given device. On device "meta": the keys and shapes only.
    Tensors stay on `device`."""
    import torch

    model_config, model, clip, vae = _random_models(size, device)
    sd = {}
    # the same three steps on 0.3.75 and 0.33.0 (BaseModel.state_dict_for_saving changed its signature)
    sd.update(model_config.process_unet_state_dict_for_saving(model.diffusion_model.state_dict()))
    sd.update(model_config.process_clip_state_dict_for_saving(clip.state_dict()))
    sd.update(model_config.process_vae_state_dict_for_saving(vae.state_dict()))
    del model, clip, vae
    out = {}
    for k, v in sd.items():
        if torch.is_floating_point(v) and v.dtype != torch.float16:
            v = v.half()
        out[k] = v.contiguous()
    return out


def count_params(sd: dict) -> dict:
    """Parameters per part of a checkpoint state dict (works on meta tensors and on safetensors headers'
    shapes given as tensors): unet, clip_l, clip_g, vae, other."""
    counts = {"unet": 0, "clip_l": 0, "clip_g": 0, "vae": 0, "other": 0}
    for k, v in sd.items():
        n = math.prod(v.shape)
        if k.startswith("model.diffusion_model."):
            counts["unet"] += n
        elif k.startswith("conditioner.embedders.0."):
            counts["clip_l"] += n
        elif k.startswith("conditioner.embedders.1."):
            counts["clip_g"] += n
        elif k.startswith("first_stage_model."):
            counts["vae"] += n
        else:
            counts["other"] += n
    return counts


def generate(out_dir: Path, force: bool = False, comfy: Path | None = None, quiet: bool = False,
             size: str = "tiny", device: str = "cpu") -> Path:
    """Write ``out_dir/<FILENAMES[size]>`` unless a current one is there. Returns its path."""
    out_dir = Path(out_dir).expanduser()
    path = out_dir / FILENAMES[size]
    say = (lambda *a: None) if quiet else (lambda *a: print("[tiny_sdxl]", *a, flush=True))
    if not force and is_current(path, size):
        say(f"up to date: {path} ({METADATA_KEY}={config_hash(size)})")
        return path
    _import_comfy(comfy)
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sd = build_state_dict(size, device)
    if torch.device(device).type != "cpu":
        sd = {k: v.cpu() for k, v in sd.items()}
    t1 = time.time()
    n_unet = count_params(sd)["unet"]
    metadata = {
        METADATA_KEY: config_hash(size),
        "unziplora.tiny.size": size,
        "unziplora.tiny.comfyui": _comfy_version(),
        "unziplora.tiny.unet_config": json.dumps(unet_config(size), sort_keys=True),
        "unziplora.tiny.note": "random weights for tests; not a usable image model",
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(sd, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    del sd
    t2 = time.time()
    size = path.stat().st_size
    say(f"wrote {path}: {size / 2**30:.2f} GiB, UNet {n_unet / 1e6:.1f} M params, "
        f"build {t1 - t0:.1f} s, save {t2 - t1:.1f} s ({torch.__version__})")
    return path


def ensure_tiny_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The tiny checkpoint's path, generated (in a subprocess, under a lock) when missing or outdated."""
    return ensure_checkpoint("tiny", cache_dir)


def ensure_checkpoint(size: str = "tiny", cache_dir: str | os.PathLike | None = None, device: str = "cpu",
                      comfy: Path | None = None) -> Path:
    """The checkpoint of `size`, generated when missing or outdated: in a subprocess (its memory, and on a GPU
    its CUDA context, go when it ends), under a lock (another process may be generating it right now)."""
    out_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = out_dir / FILENAMES[size]
    if is_current(path, size):
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / f".{path.name}.lock"
    with open(lock_path, "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be generating it right now
        except ImportError:  # not POSIX: no lock
            pass
        if is_current(path, size):
            return path
        cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out_dir), "--size", size,
               "--device", str(device)]
        if comfy:
            cmd += ["--comfyui", str(comfy)]
        subprocess.run(cmd, check=True)
    if not is_current(path, size):
        raise RuntimeError(f"generating {path} did not produce a current {size} checkpoint")
    return path


# ------------------------------------------------------------------------------------------------ checking

_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
           "I32": "int32", "U8": "uint8", "BOOL": "bool"}


def header_state_dict(path: Path) -> dict:
    """A safetensors file's tensors as meta tensors (names, shapes, dtypes) from its header alone."""
    import torch

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: torch.empty(v["shape"], dtype=getattr(torch, _DTYPES[v["dtype"]]), device="meta")
            for k, v in header.items()}


def check_layout(sd: dict) -> dict:
    """What ComfyUI's CheckpointLoaderSimple does with `sd`, on shapes only (meta tensors work): the model type it
    detects must be SDXL, and the UNet, CLIP-L/G and VAE it builds for it must find every one of their tensors
    in `sd` at the right shape. Raises AssertionError naming what is wrong; returns what was detected."""
    import torch

    import comfy.ldm.models.autoencoder
    import comfy.model_detection
    import comfy.supported_models
    import comfy.utils

    unet_prefix = "model.diffusion_model."
    assert any(k.startswith(unet_prefix) for k in sd), f"no {unet_prefix} keys ({len(sd)} keys in all)"
    model_config = comfy.model_detection.model_config_from_unet(dict(sd), unet_prefix)
    assert model_config is not None, "Could not detect model type"
    assert type(model_config) is comfy.supported_models.SDXL, f"detected {type(model_config).__name__}, not SDXL"
    model_config.set_inference_dtype(torch.float16, None)

    def compare(part: str, want: dict, have: dict) -> None:
        missing = sorted(set(want) - set(have))
        assert not missing, f"{part}: {len(missing)} tensors missing, e.g. {missing[:3]}"
        wrong = [k for k in want if tuple(want[k].shape) != tuple(have[k].shape)]
        assert not wrong, f"{part}: {len(wrong)} tensors of the wrong shape, e.g. {wrong[:3]}"

    unet_sd = comfy.utils.state_dict_prefix_replace(dict(sd), {unet_prefix: ""}, filter_keys=True)
    unet = model_config.get_model({}, device="meta").diffusion_model.state_dict()
    compare("UNet", unet, unet_sd)
    extra = sorted(set(unet_sd) - set(unet))
    assert not extra, f"UNet: {len(extra)} tensors the model does not have, e.g. {extra[:3]}"

    clip_target = model_config.clip_target(state_dict=sd)
    clip_sd = model_config.process_clip_state_dict(dict(sd))
    clip = clip_target.clip(device="meta", dtype=torch.float16).state_dict()
    # SDXL's own files lack these too (process_clip_state_dict_for_saving drops them; the loader keeps its init)
    absent = ("position_ids", "clip_l.logit_scale", "clip_l.transformer.text_projection.weight")
    compare("CLIP", {k: v for k, v in clip.items() if not k.endswith(absent)}, clip_sd)

    vae_sd = comfy.utils.state_dict_prefix_replace(dict(sd), {k: "" for k in model_config.vae_key_prefix},
                                                   filter_keys=True)
    with torch.device("meta"):
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4).state_dict()
    compare("VAE", vae, vae_sd)
    return {"model": type(model_config).__name__, "unet_config": model_config.unet_config, "keys": len(sd),
            **count_params(sd)}




def verify(path: Path, sample: bool = True, size: int = 128) -> dict:
    """Load with ComfyUI's stock loader, check it is SDXL with the expected attention blocks, sample once."""
    _import_comfy()
    import torch

    import comfy.ldm.modules.attention
    import comfy.model_base
    import comfy.sample
    import comfy.sd

    t0 = time.time()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:4]
    report = {"load_s": round(time.time() - t0, 1)}
    base = model.model
    assert isinstance(base, comfy.model_base.SDXL), type(base)
    unet = base.diffusion_model
    st = comfy.ldm.modules.attention.SpatialTransformer

    def has_st(block):
        return any(isinstance(m, st) for m in block)

    with_attn = [i for i, b in enumerate(unet.output_blocks) if has_st(b)]
    assert with_attn == [0, 1, 2, 3, 4, 5], with_attn
    assert has_st(unet.middle_block)
    assert [i for i, b in enumerate(unet.input_blocks) if has_st(b)] == [4, 5, 7, 8]
    report["unet_params_M"] = round(sum(p.numel() for p in unet.parameters()) / 1e6, 1)
    for name, p in list(unet.named_parameters()) + list(clip.cond_stage_model.named_parameters()):
        assert torch.isfinite(p).all(), name

    if sample:
        t1 = time.time()
        pos = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
        neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        for cond in (pos, neg):
            assert torch.isfinite(cond[0][0]).all() and torch.isfinite(cond[0][1]["pooled_output"]).all()
        latent = torch.zeros([1, 4, size // 8, size // 8])
        noise = comfy.sample.prepare_noise(latent, 0)
        out = comfy.sample.sample(model, noise, 2, 7.0, "euler", "normal", pos, neg, latent, seed=0)
        assert torch.isfinite(out).all(), "sampled latent is not finite"
        with torch.no_grad():
            image = vae.decode(out)
        assert torch.isfinite(image).all(), "decoded image is not finite"
        assert tuple(image.shape) == (1, size, size, 3), tuple(image.shape)
        report.update(sample_s=round(time.time() - t1, 1), latent_std=round(float(out.std()), 3),
                      image_mean=round(float(image.mean()), 3), image_std=round(float(image.std()), 3))
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default: {default_cache_dir()})")
    ap.add_argument("--force", action="store_true", help="regenerate even when a current file exists")
    ap.add_argument("--verify", action="store_true", help="load it with ComfyUI and sample 128 px afterwards")
    ap.add_argument("--comfyui", type=Path, default=None, help="ComfyUI directory (default: $COMFYUI_DIR or "
                    "<repo>/.comfyui-path)")
    ap.add_argument("--size", choices=list(SIZES), default="tiny", help="tiny (tests) or full (SDXL's own UNet)")
    ap.add_argument("--device", default="cpu", help="where the random weights are drawn (cpu, cuda, cuda:1)")
    ap.add_argument("--check", action="store_true", help="check the written file's layout (what the stock loader "
                    "detects and builds, from its header) and print it as one JSON line")
    ap.add_argument("--print-hash", action="store_true", help="print the configuration hash and exit")
    args = ap.parse_args(argv)
    if args.print_hash:
        print(config_hash(args.size))
        return 0
    if args.comfyui:
        os.environ["COMFYUI_DIR"] = str(args.comfyui)
    path = generate(args.out or default_cache_dir(), force=args.force, comfy=args.comfyui, size=args.size,
                    device=args.device)
    if args.check:
        found = check_layout(header_state_dict(path))
        found.pop("unet_config")
        print("[tiny_sdxl] layout:", json.dumps(dict(found, bytes=path.stat().st_size)), flush=True)
    if args.verify:
        print("[tiny_sdxl] verify:", json.dumps(verify(path)), flush=True)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
