"""The output name is decided once, when the job starts: what the node returns (planned_outputs) is what is
written, or nothing is, never a file under another name."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from tiny_models import build_tiny_sdxl, tiny_training_parts

from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.jobs import JobManager
from unziplora_pack.training.loop import TrainInputs
from unziplora_pack.training.model_copy import private_unet_copy
from unziplora_pack.training.service import OutputDirs, TrainingService

CFG = TrainConfig(steps=2, rank=2, resolution=64, sample_times=1, checkpoint_every=1, seed=3)


@pytest.fixture(scope="module")
def base():
    patcher = build_tiny_sdxl(seed=0)
    unet, fp = private_unet_copy(patcher)
    return dict(unet=unet, fp=fp, **tiny_training_parts(patcher))


@pytest.fixture
def svc(tmp_path):
    dirs = OutputDirs(loras=str(tmp_path / "loras"), bundles=str(tmp_path / "bundles"),
                      checkpoints=str(tmp_path / "ckpt"))
    return TrainingService(JobManager(str(tmp_path / "jobs.json")), dirs, device=torch.device("cpu"))


def start(svc, base):
    inputs = TrainInputs(unet=copy.deepcopy(base["unet"]), streams=base["streams"], posteriors=base["posteriors"],
                         adm=base["adm"], base_fingerprint=base["fp"], info={"prompt": "p"})
    return svc.start(inputs, CFG, "cat", resume_prompt={"3": {}}, node_id="3")


def test_what_the_node_returns_is_what_is_written(svc, base):
    job = svc.manager.wait(start(svc, base).id, 600)
    assert job.state == "done", job.error
    assert job.outputs["name"] == "cat"
    assert {k: job.outputs[k] for k in ("content", "style", "bundle")} == job.info["planned_outputs"]


def test_a_file_that_takes_the_name_meanwhile_is_not_overwritten_nor_dodged(svc, base):
    """Before: the export chose a name again (cat_2) while the node had returned cat's paths."""
    job = start(svc, base)
    planned = job.info["planned_outputs"]
    os.makedirs(os.path.dirname(planned["content"]), exist_ok=True)
    with open(planned["content"], "wb") as f:  # e.g. copied in by hand while the job trains
        f.write(b"someone else's file")
    job = svc.manager.wait(job.id, 600)
    assert job.state == "failed" and "which appeared while the job trained" in job.error, job.error
    assert "the last good checkpoint (step 1) is kept" in job.error, job.error
    assert open(planned["content"], "rb").read() == b"someone else's file"
    assert sorted(os.listdir(os.path.dirname(planned["content"]))) == ["cat_content.safetensors"]
    assert not os.path.exists(planned["bundle"]) and job.resumable
