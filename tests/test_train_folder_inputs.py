"""Train Folder takes every input of Train (it builds its schema from Train's), so Train's later inputs must reach
each job of the batch too: save_every (the LoRAs every N steps, issue 21) and device (issue 23). Session 5's Train
Folder took them into **_ignored: every batch job trained on ComfyUI's device and saved no step files."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_bad_inputs_nodes import TRAIN_DEFAULTS
from test_train_device import two_gpus  # noqa: F401 -- fixture
from test_train_device import mm  # noqa: F401 -- fixture (two_gpus uses it)
from unziplora_pack.nodes import batch_run
from unziplora_pack.nodes.train_folder import UnZipLoRATrainFolder
from unziplora_pack.training.loop import TrainInputs

FOLDER_DEFAULTS = {k: v for k, v in TRAIN_DEFAULTS.items() if k not in ("image", "run_mode")}


@pytest.fixture
def started(tmp_path, monkeypatch):
    """A folder of two images under a temporary input directory; every model step faked; returns what the
    service was asked to start (one dict of keyword arguments per job) and the device room was made on."""
    import folder_paths

    root = tmp_path / "input"
    (root / "shots").mkdir(parents=True)
    for stem in ("a", "b"):
        (root / "shots" / f"{stem}.png").write_bytes(b"not read: load_image is faked")
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(root))
    seen = {"start": [], "room": []}

    class Service:
        manager = SimpleNamespace(list=lambda: [], get=lambda job_id: None)

        def start(self, inputs, config, name, **kw):
            seen["start"].append(dict(kw, name=name))
            return SimpleNamespace(id=f"job{len(seen['start'])}", info={"output_name": name})

    def prepare(model, clip, vae, image, prompt, content, style, config, shared=None):
        shared.setdefault("unet", torch.nn.Linear(1, 1))
        return TrainInputs(unet=shared["unet"], streams=None, posteriors=None, adm=None, info={})

    monkeypatch.setattr(batch_run, "service", lambda: Service())
    monkeypatch.setattr(batch_run, "load_image", lambda path, shown: torch.zeros(1, 8, 8, 3))
    monkeypatch.setattr(batch_run, "prepare_inputs", prepare)
    monkeypatch.setattr(batch_run, "make_room_for_training", lambda unet, device=None: seen["room"].append(device))
    monkeypatch.setattr(UnZipLoRATrainFolder, "hidden", SimpleNamespace(extra_pnginfo=None, unique_id="5",
                                                                       prompt=None), raising=False)
    return seen


def test_save_every_and_device_reach_every_job_of_the_batch(started, two_gpus):  # noqa: F811
    out = UnZipLoRATrainFolder.execute(**FOLDER_DEFAULTS, folder="shots", save_every=3, device="gpu:1")
    assert out.args[2].split("\n") == ["cat_a", "cat_b"]
    assert [(s["name"], s["save_every"], s["device"]) for s in started["start"]] == [
        ("cat_a", 3, torch.device("cuda", 1)), ("cat_b", 3, torch.device("cuda", 1))]
    assert started["room"] == [torch.device("cuda", 1)]  # room made once, for the batch's one shared copy


def test_defaults_train_on_comfyuis_device_without_step_files(started):
    UnZipLoRATrainFolder.execute(**FOLDER_DEFAULTS, folder="shots")
    assert [(s["save_every"], s["device"]) for s in started["start"]] == [(0, None), (0, None)]
    assert started["room"] == [None]


def test_a_device_that_is_not_there_is_refused_before_any_image_is_read(started):
    with pytest.raises(ValueError, match=r"device = 'gpu:3' is not allowed: one of default, cpu"):
        UnZipLoRATrainFolder.execute(**FOLDER_DEFAULTS, folder="shots", device="gpu:3")
    assert started["start"] == [] and started["room"] == []
