"""save_every (issue 21, "picking an earlier step"): the LoRAs of every N-th step are written beside the run's
own, named by step, listed in the loaders' folders, counted in the job's disk figure and deleted with its other
extras. On the tiny in-process model, through the real TrainingService and Trainer."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from safetensors.torch import load_file

from tiny_models import tiny_training_parts
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.jobs import JobManager
from unziplora_pack.training.loop import TrainInputs
from unziplora_pack.training.model_copy import private_unet_copy
from unziplora_pack.training.service import OutputDirs, TrainingService

CFG = TrainConfig(steps=5, rank=4, resolution=64, sample_times=2, checkpoint_every=0, seed=3)


@pytest.fixture(scope="module")
def base():
    from tiny_models import build_tiny_sdxl

    patcher = build_tiny_sdxl(seed=0)
    unet, fp = private_unet_copy(patcher)
    parts = tiny_training_parts(patcher)
    return dict(unet=unet, fp=fp, streams=parts["streams"], post=parts["posteriors"], adm=parts["adm"])


def test_save_every_writes_named_step_files_counted_and_deleted_with_the_extras(tmp_path, base):
    dirs = OutputDirs(loras=str(tmp_path / "loras" / "unziplora"), bundles=str(tmp_path / "unziplora"),
                      checkpoints=str(tmp_path / "checkpoints"))
    svc = TrainingService(JobManager(str(tmp_path / "jobs.json")), dirs, device=torch.device("cpu"))
    inputs = TrainInputs(unet=copy.deepcopy(base["unet"]), streams=base["streams"], posteriors=base["post"],
                         adm=base["adm"], base_fingerprint=base["fp"],
                         info={"prompt": "A sks cat in sketch style", "content_prompt": "A sks cat",
                               "style_prompt": "A cat in sketch style"})
    job = svc.start(inputs, CFG, "cat", node_id="3", save_every=2)
    job = svc.manager.wait(job.id, timeout=300)
    assert job.state == "done", job.error
    # steps 2 and 4; step 5 is the run's own files
    assert job.info["step_files"] == {
        str(s): {"content": f"cat_step{s:06d}_content.safetensors", "style": f"cat_step{s:06d}_style.safetensors",
                 "bundle": f"cat_step{s:06d}.safetensors"} for s in (2, 4)}
    loras = sorted(os.listdir(dirs.loras))
    assert loras == ["cat_content.safetensors", "cat_step000002_content.safetensors",
                     "cat_step000002_style.safetensors", "cat_step000004_content.safetensors",
                     "cat_step000004_style.safetensors", "cat_style.safetensors"], loras
    assert sorted(os.listdir(dirs.bundles)) == ["cat.safetensors", "cat_step000002.safetensors",
                                                "cat_step000004.safetensors"]
    early, final = (load_file(os.path.join(dirs.loras, f)) for f in ("cat_step000002_content.safetensors",
                                                                      "cat_content.safetensors"))
    assert early.keys() == final.keys()  # the same LoRA layout, an earlier state of it
    assert any(not torch.equal(early[k], final[k]) for k in final), "the step-2 LoRA is the final one"
    paths = svc.manager.retention.step_file_paths(job)
    step_bytes = sum(os.path.getsize(p) for p in paths)
    assert len(paths) == 6 and job.checkpoint_bytes >= step_bytes > 0
    freed = svc.manager.delete_checkpoints(job.id)
    assert freed >= step_bytes and not any(os.path.exists(p) for p in paths)
    assert "step_files" not in job.info and job.checkpoint_bytes == 0
    assert sorted(os.listdir(dirs.loras)) == ["cat_content.safetensors", "cat_style.safetensors"]
