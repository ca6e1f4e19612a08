#!/usr/bin/env python
"""A random-weight, SDXL-architecture checkpoint small enough for CPU tests, that stock ComfyUI loads as SDXL.

    python scripts/tiny_sdxl.py                      # -> ${UNZIPLORA_CACHE:-~/.cache/unziplora-dev}/models
    python scripts/tiny_sdxl.py --out DIR --verify   # also load it back and sample 128 px on the CPU

From Python: ``ensure_tiny_checkpoint(cache_dir=None) -> Path`` (generates in a subprocess when missing).

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

The safetensors metadata key ``unziplora.tiny`` holds a hash of the generator's configuration; a file with
the same hash is reused, anything else is regenerated.
"""

from __future__ import annotations

import argparse
import hashlib
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
GENERATOR_VERSION = 1
SEED = 20240501
STD = 0.02
OUT_STD = 0.002  # the UNet's final conv: keeps eps predictions small so sampling stays finite

UNET_CONFIG = {
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
    "channel_mult": [1, 1, 1],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

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


def config_hash() -> str:
    """Hash of everything that determines the file's contents."""
    spec = {
        "generator": GENERATOR_VERSION,
        "seed": SEED,
        "std": STD,
        "out_std": OUT_STD,
        "unet": UNET_CONFIG,
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
    """ComfyUI's directory: $COMFYUI_DIR, else the path scripts/setup_dev.sh wrote to <repo>/.comfyui-path."""
    env = os.environ.get("COMFYUI_DIR")
    if env:
        return Path(env).expanduser().resolve()
    marker = REPO / ".comfyui-path"
    if marker.exists():
        return Path(marker.read_text().strip())
    return REPO / ".comfyui"


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


def is_current(path: Path) -> bool:
    return path.is_file() and file_hash(path) == config_hash()


# ---------------------------------------------------------------------------------------------- generation


def _import_comfy(comfy: Path | None = None):
    """Put ComfyUI on sys.path and make it run on the CPU when it has not been imported yet."""
    comfy = Path(comfy) if comfy else comfy_dir()
    if not (comfy / "comfy").is_dir():
        raise SystemExit(f"ComfyUI not found at {comfy}: run `bash scripts/setup_dev.sh` or set COMFYUI_DIR")
    if str(comfy) not in sys.path:
        sys.path.insert(0, str(comfy))
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True


def init_module_(module, generator, std: float = STD) -> None:
    """Give every parameter a defined value: norms 1/0, biases 0, everything else normal(0, std)."""
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
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * s)


def build_state_dict():
    """The full checkpoint state dict (original SDXL key layout), fp16, deterministic."""
    import torch

    import comfy.ldm.models.autoencoder
    import comfy.sdxl_clip
    import comfy.supported_models

    g = torch.Generator().manual_seed(SEED)

    model_config = comfy.supported_models.SDXL(dict(UNET_CONFIG))
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({}, device="cpu")
    init_module_(model.diffusion_model, g)
    with torch.no_grad():
        out_conv = model.diffusion_model.out[2]
        out_conv.weight.copy_(torch.randn(out_conv.weight.shape, generator=g) * OUT_STD)

    clip = comfy.sdxl_clip.SDXLClipModel(device="cpu", dtype=torch.float16)
    init_module_(clip, g)
    clip_sd = clip.state_dict()

    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
    init_module_(vae, g)
    vae_sd = {k: v.half() for k, v in vae.state_dict().items()}
    del vae

    sd = model.state_dict_for_saving(clip_sd, vae_sd)
    out = {}
    for k, v in sd.items():
        if torch.is_floating_point(v) and v.dtype != torch.float16:
            v = v.half()
        out[k] = v.contiguous()
    return out


def generate(out_dir: Path, force: bool = False, comfy: Path | None = None, quiet: bool = False) -> Path:
    """Write ``out_dir/tiny_sdxl.safetensors`` unless a current one is there. Returns its path."""
    out_dir = Path(out_dir).expanduser()
    path = out_dir / FILENAME
    say = (lambda *a: None) if quiet else (lambda *a: print("[tiny_sdxl]", *a, flush=True))
    if not force and is_current(path):
        say(f"up to date: {path} ({METADATA_KEY}={config_hash()})")
        return path
    _import_comfy(comfy)
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sd = build_state_dict()
    t1 = time.time()
    n_unet = sum(v.numel() for k, v in sd.items() if k.startswith("model.diffusion_model."))
    metadata = {
        METADATA_KEY: config_hash(),
        "unziplora.tiny.unet_config": json.dumps(UNET_CONFIG, sort_keys=True),
        "unziplora.tiny.note": "random weights for tests; not a usable image model",
    }
    tmp = path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
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
    out_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = out_dir / FILENAME
    if is_current(path):
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / f".{FILENAME}.lock"
    with open(lock_path, "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be generating it right now
        except ImportError:  # not POSIX: no lock
            pass
        if is_current(path):
            return path
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--out", str(out_dir)], check=True)
    if not is_current(path):
        raise RuntimeError(f"generating {path} did not produce a current tiny checkpoint")
    return path


# ------------------------------------------------------------------------------------------------ checking


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
    ap.add_argument("--print-hash", action="store_true", help="print the configuration hash and exit")
    args = ap.parse_args(argv)
    if args.print_hash:
        print(config_hash())
        return 0
    if args.comfyui:
        os.environ["COMFYUI_DIR"] = str(args.comfyui)
    path = generate(args.out or default_cache_dir(), force=args.force, comfy=args.comfyui)
    if args.verify:
        print("[tiny_sdxl] verify:", json.dumps(verify(path)), flush=True)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
