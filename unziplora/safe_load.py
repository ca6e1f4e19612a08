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
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= os.path.getsize(path) - 8


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
    if _looks_like_safetensors(path):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
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
