"""Gradient checkpointing of a private SDXL UNet's blocks, for training.

ComfyUI's UNetModel does not call its blocks: it hands each TimestepEmbedSequential to
forward_timestep_embed, which iterates the block's layers and dispatches on isinstance (ResBlock gets
(x, emb), SpatialTransformer gets (x, context, transformer_options), the rest (x)). So the unit that can
be wrapped is each layer of each input / middle / output block, and a wrapper must keep the layer's type.
We swap the class of those layer instances for a subclass whose forward runs the original under
torch.utils.checkpoint: type, module paths, state_dict and hooks stay as they were, nothing global is
monkeypatched, and `disable_checkpointing` swaps the classes back.

The trap (comfyui.md): the recomputation in backward re-runs the layer with the transformer_options dict
the UNet keeps mutating (transformer_options["block"] has moved on to the last output block by then), so
block-keyed replace patches would resolve to the wrong block. Each checkpointed call therefore gets a
shallow copy of every dict argument taken at forward time, and each (re)run a fresh copy of that snapshot.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .targets import unet_of

_CLASSES: dict[type, type] = {}


def _snapshot(value):
    return dict(value) if isinstance(value, dict) else value


class _CheckpointedLayer:
    _ckpt_base: type

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self._ckpt_base.forward(self, *args, **kwargs)
        args = tuple(_snapshot(a) for a in args)
        kwargs = {k: _snapshot(v) for k, v in kwargs.items()}
        return checkpoint(self._ckpt_run, *args, use_reentrant=False, **kwargs)

    def _ckpt_run(self, *args, **kwargs):
        # first run and recomputation each start from the same snapshot (the layer writes into it)
        args = tuple(_snapshot(a) for a in args)
        kwargs = {k: _snapshot(v) for k, v in kwargs.items()}
        return self._ckpt_base.forward(self, *args, **kwargs)


def _checkpointed_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"Checkpointed{base.__name__}", (_CheckpointedLayer, base), {"_ckpt_base": base})
        _CLASSES[base] = cls
    return cls


# The blocks with 10 transformer blocks each in SDXL: nearly all activations of a 1024 px step live here.
DEEP_BLOCKS = ("input_blocks.7", "input_blocks.8", "middle_block", "output_blocks.0", "output_blocks.1",
               "output_blocks.2")


# What is checkpointed: every block layer, only the layers of DEEP_BLOCKS, or nothing.
MODES = ("all", "deep", "off")


def checkpointing_mode(setting: str, device) -> str:
    """The one rule from the node's gradient_checkpointing setting (auto, on, selective, off) to what is
    checkpointed on `device`: the loop applies it (apply_mode) and the VRAM estimate plans with it.
    auto: every block on a GPU (memory is what is short there), nothing on the CPU (time is)."""
    if setting == "on" or (setting == "auto" and torch.device(device).type != "cpu"):
        return "all"
    if setting == "selective":
        return "deep"
    return "off"


def apply_mode(model, mode: str) -> int:
    """Checkpoint what `mode` (checkpointing_mode) names; returns how many layers were wrapped."""
    if mode == "all":
        return enable_checkpointing(model)
    if mode == "deep":
        return enable_checkpointing(model, DEEP_BLOCKS)
    if mode != "off":
        raise ValueError(f"checkpointing mode {mode!r}: expected one of {', '.join(MODES)}")
    return 0


def _named_block_layers(unet: nn.Module):
    for attr in ("input_blocks", "output_blocks"):
        for i, block in enumerate(getattr(unet, attr, None) or []):
            for j, layer in enumerate(block):
                yield f"{attr}.{i}.{j}", layer
    if getattr(unet, "middle_block", None) is not None:
        for j, layer in enumerate(unet.middle_block):
            yield f"middle_block.{j}", layer


def _block_layers(unet: nn.Module):
    for _, layer in _named_block_layers(unet):
        yield layer


def enable_checkpointing(model, blocks: tuple[str, ...] | None = None) -> int:
    """Checkpoint every layer of every input / middle / output block, or only of `blocks` (path prefixes such
    as DEEP_BLOCKS: selective checkpointing); returns how many were wrapped."""
    n = 0
    for name, layer in _named_block_layers(unet_of(model)):
        if blocks is not None and not any(name == b or name.startswith(b + ".") for b in blocks):
            continue
        if not isinstance(layer, _CheckpointedLayer):
            layer.__class__ = _checkpointed_class(type(layer))
            n += 1
    return n


def disable_checkpointing(model) -> int:
    n = 0
    for layer in _block_layers(unet_of(model)):
        if isinstance(layer, _CheckpointedLayer):
            layer.__class__ = layer._ckpt_base
            n += 1
    return n
