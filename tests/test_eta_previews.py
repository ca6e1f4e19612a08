"""The ETA counts the preview rounds still to come from the first step (issue 21.8), not only after one has
rendered: before that a round is estimated in training steps (service.preview_round_steps), then measured."""

from __future__ import annotations

import time

import pytest

from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.jobs import JobManager
from unziplora_pack.training.service import preview_round_steps


def _eta_after_two_steps(round_steps: float, rendered: bool) -> float:
    manager = JobManager(None)
    seen = {}

    def work(ctx):
        ctx.previews_left = lambda step: 2
        ctx.preview_round_steps = round_steps
        ctx.progress(0, 20)
        time.sleep(0.2)
        ctx.progress(1, 20, 1.0)
        if rendered:
            time.sleep(0.6)
            ctx.preview_done(0.6)  # a measured round replaces the estimate
        time.sleep(0.2)
        ctx.progress(2, 20, 1.0)  # ~0.2 s a training step
        seen["eta"] = ctx.job.eta_s
        return {}

    job = manager.submit("eta", work, total=20)
    manager.wait(job.id, timeout=10)
    return seen["eta"]


def test_eta_counts_the_previews_to_come_before_the_first_has_rendered():
    # 18 steps at ~0.2 s = 3.6 s, plus 2 rounds estimated at 5 steps each = 2.0 s (before: 3.6 s, no previews)
    assert 5.0 < _eta_after_two_steps(5.0, rendered=False) < 6.8


def test_a_measured_round_replaces_the_estimate():
    # 3.6 s of steps + 2 measured rounds of 0.6 s; the estimate (50 steps a round = 20 s) no longer counts
    assert 4.3 < _eta_after_two_steps(50.0, rendered=True) < 5.9


@pytest.mark.parametrize("mode, expected", [("off", 16.0), ("deep", 16.0), ("all", 12.0)])
def test_a_round_is_three_images_of_two_forwards_a_sampling_step(mode, expected):
    # 8 sampling steps x 3 images x (cond + uncond) = 48 forwards; a training step ~3 forwards (4 checkpointed)
    assert preview_round_steps(TrainConfig(preview_steps=8), mode) == pytest.approx(expected)
