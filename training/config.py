"""Training settings: the paper's values as the defaults, one validation pass (the card-size presets: presets.py).

Every bad value raises ValueError naming the input and what is allowed, so the node can show it as is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from ..unziplora.roles import MODES

OPTIMIZERS = ("auto", "adamw", "adamw8bit", "adamw_bf16", "low_memory")


# settings whose node input has another name: messages name the input the user sees
INPUT_NAMES = {"sample_times": "selections"}
CHECKPOINTING = ("auto", "on", "selective", "off")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "unziplora"
    steps: int = 600
    rank: int = 64
    lr_content: float = 5e-5
    lr_style: float = 5e-5
    lr_merger: float = 5e-3
    column_ratio: float = 0.1
    sample_times: int = 3
    orth_lambda: float = 0.5
    score_threshold: float = 1e-5
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    resolution: int = 1024
    seed: int = 0
    checkpoint_every: int = 200
    preview_every: int = 0  # 0 = no previews
    preview_steps: int = 8
    gradient_checkpointing: str = "auto"  # auto = on for GPU, off on CPU; selective = only the 10-deep blocks
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    # auto = 8-bit AdamW when bitsandbytes + CUDA, else torch AdamW; low_memory = 8-bit AdamW when bitsandbytes +
    # CUDA, else AdamW with bf16 moments (training/adamw_bf16.py); adamw_bf16 = always the latter
    optimizer: str = "auto"

    def validate(self) -> "TrainConfig":
        def need(ok, name: str, allowed: str):
            if not ok:
                shown = INPUT_NAMES.get(name, name)
                raise ValueError(f"{shown} = {getattr(self, name)!r} is not allowed: {allowed}")

        for f in fields(self):  # a string where a number belongs would otherwise fail below as a TypeError
            value, kind = getattr(self, f.name), type(f.default)
            ok = isinstance(value, kind) and not isinstance(value, bool) or (kind is float and isinstance(value, int)
                                                                            and not isinstance(value, bool))
            need(ok and not (isinstance(value, float) and value != value), f.name,
                 f"a {'whole number' if kind is int else 'finite number' if kind is float else 'text'}")

        need(self.mode in MODES, "mode", f"one of {', '.join(MODES)}")
        need(isinstance(self.steps, int) and 1 <= self.steps <= 100_000, "steps", "a whole number from 1 to 100000")
        if MODES[self.mode].column_separation:
            need(self.steps >= 2, "steps", f"at least 2 in mode {self.mode} (a column selection follows a reset)")
        need(isinstance(self.rank, int) and 1 <= self.rank <= 1024, "rank", "a whole number from 1 to 1024")
        for name in ("lr_content", "lr_style", "lr_merger"):
            need(0 < getattr(self, name) <= 1, name, "a learning rate above 0 and at most 1")
        need(0 < self.column_ratio <= 1, "column_ratio", "a fraction above 0 and at most 1")
        need(isinstance(self.sample_times, int) and 1 <= self.sample_times <= self.steps, "sample_times",
             f"a whole number from 1 to steps ({self.steps})")
        need(0 <= self.orth_lambda <= 100, "orth_lambda", "a number from 0 to 100")
        need(self.score_threshold >= 0, "score_threshold", "a number >= 0")
        need(0 <= self.weight_decay <= 1, "weight_decay", "a number from 0 to 1")
        need(self.grad_clip > 0, "grad_clip", "a number above 0")
        need(isinstance(self.resolution, int) and 64 <= self.resolution <= 4096 and self.resolution % 64 == 0,
             "resolution", "a multiple of 64 from 64 to 4096")
        need(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "a whole number from 0 to 2^63-1")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0, "checkpoint_every",
             "a whole number >= 0 (0 = only at the end)")
        need(isinstance(self.preview_every, int) and self.preview_every >= 0, "preview_every",
             "a whole number >= 0 (0 = no previews)")
        need(isinstance(self.preview_steps, int) and 1 <= self.preview_steps <= 100, "preview_steps", "1 to 100")
        need(self.gradient_checkpointing in CHECKPOINTING, "gradient_checkpointing", "auto, on, selective or off")
        need(self.precision in ("auto", "fp32", "bf16", "fp16"), "precision", "auto, fp32, bf16 or fp16")
        need(self.optimizer in OPTIMIZERS, "optimizer", ", ".join(OPTIMIZERS[:-1]) + " or " + OPTIMIZERS[-1])
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)
