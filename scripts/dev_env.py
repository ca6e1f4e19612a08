"""The one developer bootstrap: where ComfyUI is, ComfyUI on sys.path (told to use the CPU when there is no CUDA),
and this repository imported as the package ``unziplora_pack`` the way ComfyUI imports a custom node pack. The
tests (tests/conftest.py), the benchmarks and the scripts start from here; nothing here needs more than the standard
library until ComfyUI itself is imported.

    sys.path.insert(0, str(REPO / "scripts"))   # where this file is (a script run from scripts/ has it already)
    import dev_env
    pack = dev_env.setup()                       # comfy.* and unziplora_pack.* import from here on
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "unziplora_pack"


def comfy_dir() -> Path:
    """ComfyUI's directory: $COMFYUI_DIR, else the path scripts/setup_dev.sh wrote to <repo>/.comfyui-path."""
    env = os.environ.get("COMFYUI_DIR")
    if env:
        return Path(env).expanduser().resolve()
    marker = REPO / ".comfyui-path"
    if marker.exists():
        return Path(marker.read_text().strip())
    return REPO / ".comfyui"


def use_comfyui(comfy: Path | None = None, cpu: bool | None = None) -> Path:
    """ComfyUI on sys.path. ComfyUI picks its device when comfy.model_management is first imported, so before that
    it is told cpu (None: when torch sees no CUDA). Returns ComfyUI's directory."""
    comfy = Path(comfy) if comfy else comfy_dir()
    if not (comfy / "comfy").is_dir():
        raise RuntimeError(f"ComfyUI not found at {comfy}: run `bash scripts/setup_dev.sh` or set COMFYUI_DIR")
    if str(comfy) not in sys.path:
        sys.path.insert(0, str(comfy))
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        if cpu is None:
            import torch

            cpu = not torch.cuda.is_available()
        comfy.cli_args.args.cpu = cpu
    return comfy


def import_pack():
    """The repository imported as the package unziplora_pack (once), as ComfyUI's load_custom_node does."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACK_NAME]
        raise
    return module


def setup(cpu: bool | None = None):
    """ComfyUI importable (use_comfyui) and the pack imported: returns the pack's module."""
    use_comfyui(cpu=cpu)
    return import_pack()
