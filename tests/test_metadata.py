"""The files describe themselves: modelspec thumbnail / author / tags / usage hint and kohya's run keys are
written by a finished run and read back from the safetensors headers."""

from __future__ import annotations

import base64
import io
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from pair_helpers import info, random_lora
from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.export import AUTHOR_ENV, export_run
from unziplora_pack.training.service import OutputDirs
from unziplora_pack.unziplora import lora_files as LF
from unziplora_pack.unziplora.model_card import thumbnail_data_uri


def _meta(path) -> dict:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata())


def _decode(uri: str) -> Image.Image:
    head, _, data = uri.partition(",")
    assert head == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def _solid(color, size=(96, 64)) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (*size, 3)).copy()


def test_thumbnail_is_a_small_square_jpeg_data_uri():
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, 32:96] = (0, 200, 0)  # the centre square is green, the sides black: a centre crop keeps only green
    img = _decode(thumbnail_data_uri(wide))
    assert img.size == (256, 256)
    mean = np.asarray(img, dtype=np.float32).mean(axis=(0, 1))
    assert mean[1] > 180 and mean[0] < 30 and mean[2] < 30
    assert len(thumbnail_data_uri(wide)) < 40_000  # headers stay small


@pytest.fixture
def exported(tiny_sdxl, tmp_path, monkeypatch):
    def run(preview_dir=None, author="Jane Doe", thumbnail=None):
        if author is None:
            monkeypatch.delenv(AUTHOR_ENV, raising=False)
        else:
            monkeypatch.setenv(AUTHOR_ENV, author)
        dirs = OutputDirs(loras=str(tmp_path / "loras" / "unziplora"), bundles=str(tmp_path / "unziplora"),
                          checkpoints=str(tmp_path / "ckpt"))
        result = SimpleNamespace(lora=random_lora(tiny_sdxl, seed=3), steps_done=7)
        inputs = SimpleNamespace(info={"prompt": "A sks cat in sketch style", "content_prompt": "A sks cat",
                                       "style_prompt": "A cat in sketch style", "images": 2},
                                 base_fingerprint="abc", thumbnail=thumbnail)
        return export_run(result, TrainConfig(resolution=512), dirs, "cat", inputs, base_name="tiny.safetensors",
                          started_at=1764581000.25, preview_dir=preview_dir)

    return run


def test_exported_files_carry_model_card_keys(exported, tmp_path):
    previews = tmp_path / "previews"
    previews.mkdir()
    # an early and a late preview of each kind: the late one is the result and must be the thumbnail
    colors = {"content": (220, 30, 30), "style": (30, 30, 220), "combined": (30, 200, 30)}
    for kind, color in colors.items():
        Image.fromarray(_solid((128, 128, 128))).save(previews / f"step_000002_{kind}.png")
        Image.fromarray(_solid(color)).save(previews / f"step_000010_{kind}.png")
    out = exported(preview_dir=str(previews))
    for role, kind in (("content", "content"), ("style", "style"), ("bundle", "combined")):
        meta = _meta(out[role])
        thumb = np.asarray(_decode(meta["modelspec.thumbnail"]), dtype=np.float32).mean(axis=(0, 1))
        assert np.abs(thumb - np.array(colors[kind])).max() < 12, (role, thumb)
        assert meta["modelspec.author"] == "Jane Doe"
    for role in LF.SIDES:
        meta = _meta(out[role])
        stem = os.path.splitext(os.path.basename(out[role]))[0]
        assert stem == f"cat_{role}"
        assert meta["ss_output_name"] == stem  # A1111's alias: must be the file's name, not "cat content"
        assert meta["modelspec.title"] == f"cat {role}"
        tags = [t.strip() for t in meta["modelspec.tags"].split(",")]
        assert {"unziplora", role, "sdxl", "lora"} <= set(tags)
        assert "Trigger: " in meta["modelspec.usage_hint"]
        assert meta["ss_training_started_at"] == "1764581000.25"
        assert float(meta["ss_training_started_at"]) == pytest.approx(1764581000.25)
        assert meta["ss_resolution"] == "(512, 512)"
        assert meta["modelspec.resolution"] == "512x512"
        assert json.loads(meta["ss_dataset_dirs"]) == {"cat": {"n_repeats": 1, "img_count": 2}}
    content_hint = _meta(out["content"])["modelspec.usage_hint"]
    assert content_hint.startswith("Trigger: A sks cat.")


def test_without_previews_the_training_image_is_the_thumbnail_and_no_author_key(exported):
    out = exported(preview_dir=None, author=None, thumbnail=_solid((240, 200, 20)))
    for role in ("content", "style", "bundle"):
        meta = _meta(out[role])
        assert "modelspec.author" not in meta  # unset setting: no empty key for browsers to show
        thumb = np.asarray(_decode(meta["modelspec.thumbnail"]), dtype=np.float32).mean(axis=(0, 1))
        assert np.abs(thumb - np.array((240, 200, 20))).max() < 12


def test_lora_metadata_trigger_and_tags_follow_the_run():
    meta = LF.lora_metadata("style", info(mode="column", tags=("cats",)), rank=4, title="x style",
                            output_name="x_style")
    assert meta["ss_output_name"] == "x_style"
    assert meta["modelspec.usage_hint"].startswith("Trigger: sketch style.")
    assert meta["modelspec.tags"] == "unziplora, style, column, sdxl, lora, cats"
    assert "modelspec.thumbnail" not in meta  # none given: none written


def test_training_image_thumbnail_source_is_a_small_copy():
    import torch

    from unziplora_pack.training.prepare import small_image

    batch = torch.zeros(2, 1100, 1500, 4)
    batch[0, ..., 0] = 1.0  # the first image is red; the second (black) must not be used
    small = small_image(batch)
    assert small.dtype == np.uint8 and small.shape == (550, 750, 3)
    assert (small[..., 0] == 255).all() and (small[..., 1:] == 0).all()
    batch[0] = 0.0
    assert (small[..., 0] == 255).all()  # a copy: the graph's tensor may change or be freed later
