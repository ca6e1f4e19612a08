"""Sizes of the unnamed-world study (bench/separation/study.py). The base config is the cache key of the 4000-step
base model, so changing it means training a new base (~45 min on a quiet core, hours on a loaded one)."""

from __future__ import annotations

from dataclasses import replace

from . import unnamed
from .base import BaseConfig
from .experiment import LoraConfig, SampleConfig

BASE = BaseConfig(steps=4000, world="unnamed", world_version=unnamed.VERSION)

PRESETS = {
    # CI's smoke test: the whole path in seconds (numbers mean nothing)
    "toy": dict(base=BaseConfig(steps=2, batch=2, world="unnamed", world_version=unnamed.VERSION), classifier_steps=2,
                subjects=2, seeds=(0,), lora=LoraConfig(steps=2, rank=4),
                sample=SampleConfig(steps=1, per_prompt=1, others=1), gate_images=2, diag_images=1),
    # the benchmark: 16 subjects x 2 seeds, one process per seed (--seeds 0 / --seeds 1). LoRA recipe from session
    # 8's pilot (bench/RESULTS.md): at 300 steps x lr 2e-3 naive's and prompt's loss did not fall on average and no
    # mode recreated its image; at 1000 steps x lr 5e-4 every mode fits (final loss 0.017-0.018 from 0.028) and recreates
    # 0.34-0.44 above the base on the pilot's 4 subjects.
    "full": dict(base=BASE, classifier_steps=1200, subjects=16, seeds=(0, 1),
                 lora=LoraConfig(steps=1000, rank=32, lr=5e-4), sample=SampleConfig(steps=16, per_prompt=4, others=2),
                 gate_images=8, diag_images=4),
}
# session 8's first full run (RESULTS: "LoRA recipe 300 steps at lr 2e-3"): --preset full-300
PRESETS["full-300"] = {**PRESETS["full"], "lora": LoraConfig(steps=300, rank=32, lr=2e-3)}
# Session 9's diagnostic of the prior gate, registered before its base trained: v3 with a base trained twice as long.
# If the prior follows fit (bench/RESULTS.md: slope fit best and took 0.69, rings worst and never drawn), a longer
# base fits the hard textures better and the prior's largest texture falls. Its base costs ~50 min, so a run on it
# would be over the 150-minute budget: a diagnostic, not a replacement for `full`.
#   .venv/bin/python -m bench.separation.base_chunk --preset full-base8k; then --preset full-base8k --report
PRESETS["full-base8k"] = {**PRESETS["full"], "base": replace(BASE, steps=8000)}
