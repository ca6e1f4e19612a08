"""Score: CLIP-I through ComfyUI's own CLIP-Vision code path (comfy.clip_vision.ClipVisionModel), with a tiny
vision transformer built from a small config json and seeded random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiny_models import init_weights_
from unziplora_pack.unziplora.scoring import clip_i, parse_labels

TINY_VISION = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64,
               "image_size": 64, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
               "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 4,
               "num_channels": 3, "num_hidden_layers": 2, "patch_size": 16, "projection_dim": 32,
               "torch_dtype": "float32"}


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    import comfy.clip_vision

    path = tmp_path_factory.mktemp("clipvision") / "tiny_vision.json"
    path.write_text(json.dumps(TINY_VISION))
    model = comfy.clip_vision.ClipVisionModel(str(path))
    init_weights_(model.model, seed=0, std=0.2)
    return model


def _image(seed: int, size=96) -> torch.Tensor:
    """A smooth picture (blobs of colour), not noise: [1, size, size, 3] in 0..1."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").movedim(1, -1)


def _noise(seed: int, size=96) -> torch.Tensor:
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def test_image_scores_higher_against_itself_than_against_noise(clip_vision):
    ref = _image(0)
    near = (ref + 0.05 * (_noise(1) - 0.5)).clamp(0, 1)
    s = clip_i(clip_vision, ref, torch.cat([ref, near, _noise(2), _noise(3)]))
    assert s[0] == pytest.approx(1.0, abs=1e-4)
    assert s[0] > s[1] > max(s[2], s[3])


def test_node_ranks_rows_and_returns_means(clip_vision, tmp_path, monkeypatch):
    import folder_paths

    from unziplora_pack.nodes.score import UnZipLoRAScore

    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    ref = _image(0)
    near = (ref + 0.05 * (_noise(1) - 0.5)).clamp(0, 1)
    style = torch.cat([_noise(5), ref, _noise(6)])  # row 1 is the training image itself
    content = torch.cat([_noise(7), near, near])
    out = UnZipLoRAScore.execute(clip_vision, ref, style_images=style, content_images=content,
                                 labels="seed 0, seed 1, seed 2")
    style_score, content_score, combined_score, best, table, report = out.args
    per_style = clip_i(clip_vision, ref, style)
    assert style_score == pytest.approx(float(per_style.mean()), abs=1e-6)
    assert combined_score == 0.0
    assert best == 1
    assert report.splitlines()[0].split("\t") == ["run", "style", "content", "mean"]
    assert report.splitlines()[2].startswith("seed 1\t1.0000")
    img = table[0].numpy()
    assert img.shape[-1] == 3 and img.shape[0] > 100
    # the best row (index 1 = the table's third text line) is highlighted
    band = (np.abs(img * 255 - np.array([70, 60, 20])).max(axis=-1) < 2).any(axis=1)
    assert band[52 + 2 * 32 + 5] and not band[52 + 32 + 5]


def test_no_samples_is_an_error_naming_the_inputs(clip_vision):
    from unziplora_pack.nodes.score import UnZipLoRAScore

    with pytest.raises(ValueError, match="style_images, content_images, combined_images"):
        UnZipLoRAScore.execute(clip_vision, _image(0))
    with pytest.raises(ValueError, match="clip_vision"):
        UnZipLoRAScore.execute(None, _image(0), style_images=_image(1))


def test_labels_fill_missing_names():
    assert parse_labels("a, b", 3) == ["a", "b", "#2"]
    assert parse_labels("", 2) == ["#0", "#1"]
