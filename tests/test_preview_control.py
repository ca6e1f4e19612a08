"""Previews as the panel needs them: Cancel ends one at its next sampling step, the ETA counts preview time,
and a LoRA previewed alone runs as its saved file does (no mergers, its own prompt's pooled vector)."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from tiny_models import random_conditioning, tiny_training_parts
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.jobs import JobCancelled, JobManager
from unziplora_pack.training.loop import Trainer, TrainInputs
from unziplora_pack.training.model_copy import private_unet_copy
from unziplora_pack.training.previews import PreviewInputs, PreviewRenderer, without_mergers
from unziplora_pack.training.service import preview_rounds_after

CFG = TrainConfig(steps=4, rank=4, resolution=64, sample_times=2, checkpoint_every=0, seed=3, preview_every=2,
                  preview_steps=3)


@pytest.fixture
def inputs(tiny_sdxl):
    unet, fp = private_unet_copy(tiny_sdxl)
    parts = tiny_training_parts(tiny_sdxl, latent_hw=(8, 8))
    adm = parts["adm"]
    inp = TrainInputs(unet=copy.deepcopy(unet), streams=parts["streams"], posteriors=parts["posteriors"],
                      adm=adm.clone(), base_fingerprint=fp)
    neg, _ = random_conditioning(9)
    inp.preview = PreviewInputs(negative=neg, negative_adm=adm.clone(), content_adm=adm * 0.5, style_adm=adm * 2.0,
                                decode=lambda lat: torch.full((1, lat.shape[-2] * 8, lat.shape[-1] * 8, 3), 0.5))
    return inp


def test_preview_rounds_after():
    cfg = TrainConfig(steps=600, preview_every=100)
    assert [preview_rounds_after(s, cfg) for s in (0, 99, 100, 550, 600)] == [6, 6, 5, 1, 0]
    odd = TrainConfig(steps=250, preview_every=100)  # 100, 200 and the last step
    assert preview_rounds_after(0, odd) == 3 and preview_rounds_after(200, odd) == 1
    assert preview_rounds_after(0, TrainConfig(steps=10, preview_every=0)) == 0


def test_cancel_interrupts_a_preview_and_keeps_a_checkpoint(inputs, tmp_path):
    trainer = Trainer(inputs, CFG, checkpoint_dir=str(tmp_path / "ckpt"))
    stop = {"now": False}
    ticks = []

    def on_tick(kind, i, n):
        ticks.append((kind, i, n))
        if kind == "style" and i == 1:
            stop["now"] = True  # Cancel pressed while the style preview samples

    renderer = PreviewRenderer(inputs.preview, inputs, CFG, trainer.objective, trainer.device, trainer.dtype,
                               str(tmp_path / "previews"), "unziplora/previews/job", should_stop=lambda: stop["now"],
                               on_tick=on_tick)
    got = []
    with pytest.raises(JobCancelled):
        trainer.run(should_stop=lambda: stop["now"], previews=renderer, on_preview=got.extend)
    # the content preview finished; the style one stopped after its second step; combined never started
    assert [e["kind"] for e in got] == ["content"], got
    assert ticks[-1] == ("style", 1, 3) and not any(k == "combined" for k, _, _ in ticks), ticks
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000002.pt"]


def test_a_lora_alone_previews_without_mergers_and_with_its_own_pooled_vector(inputs, tmp_path):
    from unziplora_pack.unziplora import kv_patch

    trainer = Trainer(inputs, CFG)
    lora = trainer._setup().lora
    for _p, _b, dual in lora.items():
        for side in ("content", "style"):
            if dual._modules.get(side) is not None:
                dual._modules[side].merger.data.fill_(0.25)
    with without_mergers(lora, "content"):
        sides = [(d.content, d.style) for _p, _b, d in lora.items()]
        assert all(torch.all(c.merger == 1) for c, _ in sides if c is not None)
        assert all(torch.all(s.merger == 0.25) for _, s in sides if s is not None)
    assert all(torch.all(d.content.merger == 0.25) for _p, _b, d in lora.items() if d.content is not None)

    seen = []
    real = kv_patch.predict_eps
    renderer = PreviewRenderer(inputs.preview, inputs, CFG, trainer.objective, trainer.device, trainer.dtype,
                               str(tmp_path), "unziplora/previews/job")
    import unziplora_pack.training.previews as previews_module

    def spy(unet, lora_, inp, t, x, adm, content=None, style=None):
        seen.append(float(adm.abs().sum()))
        return real(unet, lora_, inp, t, x, adm, content=content, style=style)

    previews_module.predict_eps, saved = spy, previews_module.predict_eps
    try:
        renderer.render(trainer.inputs.unet, lora, 2, True)
    finally:
        previews_module.predict_eps = saved
    combined = float(inputs.adm.abs().sum())
    per_call = seen[0::2]  # cond and uncond alternate; the cond calls carry the prompt's vector
    steps = CFG.preview_steps
    assert per_call[:steps] == pytest.approx([combined * 0.5] * steps, rel=1e-5)  # content: its own
    assert per_call[steps:2 * steps] == pytest.approx([combined * 2.0] * steps, rel=1e-5)  # style: its own
    assert per_call[2 * steps:] == pytest.approx([combined] * steps, rel=1e-5)  # combined


def test_eta_counts_the_previews_still_to_come(tmp_path):
    manager = JobManager(None)
    seen = {}

    def work(ctx):
        ctx.previews_left = lambda step: 2 if step < 10 else 0
        ctx.progress(0, 20)
        time.sleep(0.2)
        ctx.progress(1, 20, 1.0)
        time.sleep(0.5)  # a preview round
        ctx.preview_done(0.5)
        time.sleep(0.2)
        ctx.progress(2, 20, 1.0)  # ~0.2 s a training step
        seen["eta"] = ctx.job.eta_s
        ctx.preview_tick("content", 0, 8)
        seen["activity"] = ctx.job.info.get("activity")
        return {}

    job = manager.submit("eta", work, total=20)
    manager.wait(job.id, timeout=10)
    # 18 steps at ~0.2 s + 2 rounds at 0.5 s = 4.6 s; steps alone 3.6 s, the plain wall-time average 8.1 s
    assert 4.2 < seen["eta"] < 5.6, seen
    assert seen["activity"] == "rendering the content preview (1/8)"
