"""Imports and paths: ComfyUI on sys.path (CPU unless CUDA), the pack imported as `unziplora_pack` the way
ComfyUI's loader and tests/conftest.py import it, and the cache folder outside git."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK = "unziplora_pack"


def cache_dir() -> Path:
    base = os.environ.get("UNZIPLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unziplora-dev")
    return Path(base) / "separation"


def comfy_dir() -> Path:
    """The one definition (scripts/tiny_sdxl.py): $COMFYUI_DIR, else what scripts/setup_dev.sh recorded."""
    name = "unziplora_scripts_tiny_sdxl"  # the name tests/comfy_server.py loads it under: one module either way
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "tiny_sdxl.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].comfy_dir()


def setup():
    """Idempotent: make `comfy` and `unziplora_pack` importable."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    comfy = comfy_dir()
    if not (comfy / "comfy").is_dir():
        raise SystemExit(f"ComfyUI not found at {comfy}: run `bash scripts/setup_dev.sh` or set COMFYUI_DIR")
    if str(comfy) not in sys.path:
        sys.path.insert(0, str(comfy))
    import torch

    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module
