"""The training loop on the tiny model: it learns, it follows the schedule, and resume is exact."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tiny_models import random_conditioning, tiny_training_parts
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.jobs import JobCancelled
from unziplora_pack.training.loop import Trainer, TrainInputs, ddpm_alphas_cumprod
from unziplora_pack.training.model_copy import private_unet_copy

CFG = TrainConfig(steps=6, rank=4, resolution=64, sample_times=2, checkpoint_every=0, seed=3)


@pytest.fixture
def make_inputs(tiny_sdxl):
    unet, fp = private_unet_copy(tiny_sdxl)
    parts = tiny_training_parts(tiny_sdxl)

    def make():
        return TrainInputs(unet=copy.deepcopy(unet), streams=parts["streams"], posteriors=parts["posteriors"],
                           adm=parts["adm"].clone(), base_fingerprint=fp)

    return make


def _lora_state(result):
    return {k: v.detach().clone() for k, v in result.lora.state_dict().items()}


def test_ddpm_schedule_matches_comfyui_sdxl_sampling(tiny_sdxl):
    a = ddpm_alphas_cumprod()
    assert a.shape == (1000,)
    assert float(a[0]) == pytest.approx(1 - 0.00085, rel=1e-9)
    # ComfyUI's own discrete schedule for SDXL: sigma_t = sqrt((1 - a_t) / a_t)
    sigmas = tiny_sdxl.model.model_sampling.sigmas.double()
    torch.testing.assert_close(((1 - a) / a).sqrt(), sigmas, rtol=1e-5, atol=0)


@pytest.mark.parametrize("optimizer", ["auto", "adamw_bf16"])
def test_run_is_deterministic_and_resume_is_exact(make_inputs, tmp_path, optimizer):
    cfg = dataclasses.replace(CFG, optimizer=optimizer)
    trainer = Trainer(make_inputs(), cfg)
    full = trainer.run()
    assert trainer.optimizer_name == {"auto": "adamw", "adamw_bf16": "adamw_bf16"}[optimizer]
    again = Trainer(make_inputs(), cfg).run()
    a, b = _lora_state(full), _lora_state(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, same inputs must give the same LoRAs"

    stops = iter([False, False, False, True])
    t1 = Trainer(make_inputs(), cfg, checkpoint_dir=str(tmp_path))
    saved = []
    with pytest.raises(JobCancelled):
        t1.run(should_stop=lambda: next(stops), on_checkpoint=saved.append)
    assert len(saved) == 1 and saved[0].endswith("step_000003.pt")
    resumed = Trainer(make_inputs(), cfg, checkpoint_dir=str(tmp_path)).run(resume_from=saved[0])
    assert resumed.steps_done == cfg.steps
    c = _lora_state(resumed)
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs after resume")
    assert full.losses[3:] == pytest.approx(resumed.losses, rel=1e-5)


def test_resume_refuses_other_settings(make_inputs, tmp_path):
    stops = iter([False, True])
    saved = []
    with pytest.raises(JobCancelled):
        Trainer(make_inputs(), CFG, checkpoint_dir=str(tmp_path)).run(should_stop=lambda: next(stops),
                                                                       on_checkpoint=saved.append)
    other = TrainConfig(**{**CFG.__dict__, "rank": 8})
    with pytest.raises(ValueError, match="rank"):
        Trainer(make_inputs(), other, checkpoint_dir=str(tmp_path)).run(resume_from=saved[0])


def test_masks_follow_the_schedule_and_base_is_untouched(make_inputs):
    inputs = make_inputs()
    before = {k: v.clone() for k, v in inputs.unet.state_dict().items()}
    result = Trainer(inputs, CFG).run()
    # after the run: masks on, every masked side holds between K and 2K columns (2 selections)
    lora = result.lora
    assert lora.masks_on
    for path, block, dual in lora.items():
        for name, side in dual.sides():
            held = int(side.mask.sum())
            if side.mask_mode == "masked":
                k = max(1, int(side.mask.numel() * CFG.column_ratio))
                assert k <= held <= 2 * k, (path, name, held)
    after = inputs.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "training must not change the base weights"
    assert all(0.0 <= p.min().item() and p.max().item() <= 1.0 for p in lora.parameter_groups()["mergers"])


def test_queue_interrupt_neither_stops_training_nor_is_swallowed(make_inputs):
    """ComfyUI's Interrupt belongs to the queue: the background run must ignore it and leave it set."""
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        result = Trainer(make_inputs(), TrainConfig(**{**CFG.__dict__, "steps": 2})).run()
        assert result.steps_done == 2
        assert mm.processing_interrupted(), "the trainer consumed the queue's interrupt flag"
    finally:
        mm.interrupt_current_processing(False)


def test_previews_render_each_kind_and_leave_training_unchanged(make_inputs, tmp_path):
    from unziplora_pack.training.previews import PreviewInputs, PreviewRenderer

    plain = Trainer(make_inputs(), CFG).run()
    cfg = TrainConfig(**{**CFG.__dict__, "preview_every": 3, "preview_steps": 2})
    inputs = make_inputs()
    neg, pooled = random_conditioning(9)
    decoded = []

    def decode(latent):  # stands in for the VAE: records what it got, returns a gray image of the right size
        decoded.append(latent.clone())
        return torch.full((1, latent.shape[-2] * 8, latent.shape[-1] * 8, 3), 0.5)

    inputs.preview = PreviewInputs(negative=neg, negative_adm=inputs.adm.clone(), decode=decode)
    trainer = Trainer(inputs, cfg)
    renderer = PreviewRenderer(inputs.preview, inputs, cfg, trainer.objective, trainer.device, trainer.dtype,
                               str(tmp_path), "unziplora/previews/job")
    got = []
    result = trainer.run(previews=renderer, on_preview=got.extend)
    assert [(e["step"], e["kind"]) for e in got] == [(s, k) for s in (3, 6) for k in ("content", "style", "combined")]
    assert all((tmp_path / e["filename"]).is_file() and e["subfolder"] == "unziplora/previews/job" for e in got)
    assert all(torch.isfinite(d).all() and d.shape == (1, 4, 8, 8) for d in decoded)
    # content-only, style-only and combined differ (each LoRA alone vs both); same noise for all of them
    assert not torch.allclose(decoded[0], decoded[1]) and not torch.allclose(decoded[1], decoded[2])
    a, b = _lora_state(plain), _lora_state(result)
    assert all(torch.equal(a[k], b[k]) for k in a), "previews changed the training result"
    assert all(d.content is not None and d.style is not None for _, blk, d in result.lora.items()
               if blk == "input_blocks.4.1"), "a side was not restored after its preview"


def test_exported_files_hold_the_trained_masked_deltas(make_inputs, tmp_path):
    """What export_run writes is the run's LoRAs: per layer, up @ down = the masked B A, mergers and masks in the
    bundle, metadata naming the run; a second export with the same name gets a new name."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from unziplora_pack.training.export import export_run
    from unziplora_pack.training.service import OutputDirs

    inputs = make_inputs()
    inputs.info.update(prompt="A sks cat in sketch style", content_prompt="A sks cat", style_prompt="A cat in sketch style")
    result = Trainer(inputs, CFG).run()
    dirs = OutputDirs(loras=str(tmp_path / "loras" / "unziplora"), bundles=str(tmp_path / "unziplora"),
                      checkpoints=str(tmp_path / "ckpt"))
    out = export_run(result, CFG, dirs, "cat", inputs, base_name="tiny.safetensors")
    files = {side: load_file(out[side]) for side in ("content", "style")}
    bundle = load_file(out["bundle"])
    checked = 0
    for path, _block, dual in result.lora.items():
        key = "lora_unet_" + path.replace(".", "_")
        for side_name, side in dual.sides():
            sd = files[side_name]
            up, down = sd[f"{key}.lora_up.weight"].float(), sd[f"{key}.lora_down.weight"].float()
            assert float(sd[f"{key}.alpha"]) == CFG.rank
            # the files are fp16: each factor within fp16 rounding of the trained one, the mask baked into up
            torch.testing.assert_close(up, side.baked_up().detach(), rtol=1e-3, atol=1e-7)
            torch.testing.assert_close(down, side.down.detach(), rtol=1e-3, atol=1e-7)
            if side.mask_mode == "masked":
                assert torch.all(up[side.mask == 0] == 0)
            if side.mask_mode == "masked":
                assert torch.equal(bundle[f"{side_name}.{path}.mask"].bool(), side.mask.bool())
            torch.testing.assert_close(bundle[f"{side_name}.{path}.merger"], side.merger.detach())
            checked += 1
    assert checked == sum(len(d.sides()) for _, _, d in result.lora.items())
    with safe_open(out["content"], "pt") as f:
        meta = f.metadata()
    assert "tiny.safetensors" in meta.values() and meta["unziplora.content_prompt"] == "A sks cat"
    again = export_run(result, CFG, dirs, "cat", inputs)
    assert again["name"] == "cat_2" and again["content"] != out["content"]
