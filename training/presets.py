"""Memory presets of the Train node: which settings fit which card.

Each preset overrides only the settings that decide memory or time (gradient checkpointing, resolution, steps);
the method's values (rank, learning rates, schedule) stay the node's. The GiB figures are simulated peaks of one
full-size SDXL step (bf16 UNet, rank 64, batch 1, paper mode) from bench/bench_memory.py (see bench/RESULTS.md):
weights, LoRA, gradients, AdamW state and the tensors saved for backward. A real card also needs the CUDA
context and allocator slack, ~1 GiB, which is why each preset's card is named with that headroom.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import TrainConfig


@dataclass(frozen=True)
class Preset:
    key: str
    summary: str
    overrides: dict
    peak_gib: float | None  # simulated at the preset's resolution, rank 64; None: not a GPU figure


PRESETS: dict[str, Preset] = {p.key: p for p in (
    Preset("auto", "the node's own settings (paper values; checkpointing on for GPUs)", {}, 8.7),
    Preset("12gb", "12 GB cards: 1024 px, every block checkpointed", {"gradient_checkpointing": "on"}, 8.7),
    # fp32 AdamW state would be 1.4 GiB of 8.3; bf16 moments (own, no package) make it 7.6, bitsandbytes' 8-bit
    # AdamW (used instead when installed) 7.3
    Preset("8gb", "8 GB cards: 768 px, every block checkpointed, AdamW with bf16 moments (8-bit AdamW if "
           "bitsandbytes is installed: ~7.3 GiB)", {"gradient_checkpointing": "on", "resolution": 768,
                                                   "optimizer": "low_memory"}, 7.6),
    Preset("16gb", "16 GB cards: 1024 px, only the 10-deep blocks checkpointed (faster)",
           {"gradient_checkpointing": "selective"}, 10.2),
    Preset("24gb", "24 GB cards: 1024 px, no checkpointing (fastest)", {"gradient_checkpointing": "off"}, 13.2),
    Preset("quick", "quick test: 100 steps at 512 px, to check a set-up end to end",
           {"gradient_checkpointing": "on", "resolution": 512, "steps": 100, "checkpoint_every": 0}, None),
)}


def preset_tooltip() -> str:
    lines = []
    for p in PRESETS.values():
        mem = f" (~{p.peak_gib:.1f} GiB)" if p.peak_gib is not None else ""
        lines.append(f"{p.key}: {p.summary}{mem}")
    return ("Memory preset; anything but auto overrides the settings it names. " + "; ".join(lines)
            + ". Peaks simulated for full-size SDXL, rank 64.")


def apply_preset(name: str, config: TrainConfig) -> TrainConfig:
    """`config` with the preset's settings; resolution is only ever lowered, steps only for the quick test."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ValueError(f"preset = {name!r} is not allowed: one of {', '.join(PRESETS)}")
    overrides = dict(preset.overrides)
    if "resolution" in overrides:
        overrides["resolution"] = min(overrides["resolution"], config.resolution)
    return replace(config, **overrides).validate()
