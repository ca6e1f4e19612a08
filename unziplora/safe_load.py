"""Loading tensors from files nobody vouched for (downloaded LoRAs, the official script's merger .pth files).

safetensors files are read as such whatever their extension. Anything else goes through torch.load with
weights_only=True: the restricted unpickler accepts tensors, containers and numbers and rejects every other
object before it is built, so a malicious pickle is refused and never runs. Nothing here ever falls back to a
full unpickle.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping

import torch


def _looks_like_safetensors(path: str) -> bool:
    """True for a safetensors file; ValueError naming the file for one cut short (its header says more than the
    file holds), which torch.load would otherwise report as an unrelated zip error."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    size = os.path.getsize(path)
    if 8 + n > size and n < 100_000_000:
        raise ValueError(f"{os.path.basename(path)}: the file is cut short (its safetensors header announces {n} "
                         f"bytes of metadata, the file has {size} bytes in all): download or copy it again")
    return 0 < n <= size - 8


def _read_safetensors(path: str, name: str):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends say what, never which file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (the file is cut short or damaged: download or copy it again)" if "incomplete" in first or \
            "covered" in first or "out of bounds" in first else ""
        raise ValueError(f"{name}: not a readable safetensors file: {first}{hint}") from None


def _collect_tensors(obj, name: str, prefix: str, out: dict) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _collect_tensors(v, name, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _collect_tensors(v, name, f"{prefix}.{i}" if prefix else str(i), out)
    elif obj is not None and not isinstance(obj, (str, int, float, bool)):
        raise ValueError(f"{name}: refused: holds a {type(obj).__name__} at {prefix!r}; only tensors, dicts and lists "
                         "are accepted")


def load_tensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) from a safetensors file or a torch file holding only plain data.

    The format is sniffed from the bytes, not the extension (bundles and renamed files keep working).
    """
    name = os.path.basename(path)
    try:
        safetensors_file = _looks_like_safetensors(path)
    except OSError as e:
        raise ValueError(f"{name}: cannot be read: {e.strerror or e}") from None
    if safetensors_file:
        return _read_safetensors(path, name)
    try:
        # weights_only: the restricted unpickler; anything beyond tensors/containers/numbers is rejected, not run.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here means "not a plain-tensor file"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name}: refused to load: not a safetensors file and not a torch file of plain tensors "
                         f"(pickled objects are never unpickled by this pack). Loader said: {first}") from None
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(obj, name, "", tensors)
    return tensors, {}
