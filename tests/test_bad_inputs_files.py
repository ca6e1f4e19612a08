"""Bad inputs that cost memory, time or a wrong file: a huge training image, a checkpoint folder that cannot be
written, and what a LoRA file says about the model it was trained on (issue 20)."""

from __future__ import annotations

import errno
import os

import types

import pytest
import torch

from pair_helpers import save_random_run
from unziplora_pack.training import data
from unziplora_pack.unziplora.pair import from_files

SHAPES = {"output_blocks.0.1.transformer_blocks.0.attn2.to_k": (2048, 64)}


def test_a_huge_image_is_box_downscaled_before_the_antialiased_resize(monkeypatch):
    """An 8192 x 8192 image at resolution 64 held the queue 190-203 s and took 6.8 GB more inside kornia's
    antialiased resize; it must only ever see an image of at most 2 x resolution (+ the remainder)."""
    import kornia

    seen = []
    real = kornia.geometry.transform.resize

    def spy(px, *a, **k):
        seen.append(tuple(px.shape[-2:]))
        return real(px, *a, **k)

    monkeypatch.setattr(kornia.geometry.transform, "resize", spy)
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    big = torch.nn.functional.interpolate(coarse, size=(2048, 1536), mode="bilinear").movedim(1, -1)
    out = data.resize_short_side(big, 64)
    assert seen and max(seen[0]) <= 2 * 64 * 2048 // 1536 + 2 and min(seen[0]) <= 2 * 64 + 1, seen
    assert out.shape == (1, 3, 80, 64)
    monkeypatch.setattr(data, "box_downscale", lambda px, resolution: px.float())  # the old path, as reference
    reference = data.resize_short_side(big, 64)
    assert (out - reference).abs().mean() < 0.01, "the box filter changed the picture"


def test_a_small_image_is_not_touched_by_the_box_filter():
    img = torch.rand(1, 100, 120, 3)
    assert torch.equal(data.box_downscale(img.movedim(-1, 1), 64), img.movedim(-1, 1))


@pytest.mark.parametrize("prediction, zsnr, keys, words", [
    ("v", True, {"modelspec.prediction_type": "v", "ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"},
     "v-prediction, zero terminal SNR"),
    ("eps", False, {"modelspec.prediction_type": "epsilon", "ss_v_parameterization": "False",
                    "ss_zero_terminal_snr": "False"}, "epsilon (noise) prediction"),
])
def test_files_say_what_the_base_model_predicts_and_the_loader_shows_it(tmp_path, monkeypatch, prediction, zsnr, keys,
                                                                         words):
    import folder_paths
    from safetensors import safe_open

    from unziplora_pack.nodes import loaders

    loras, bundles = tmp_path / "loras", tmp_path / "bundles"
    saved = save_random_run(loras / "unziplora", "cat", SHAPES, seed=1, bundle_directory=bundles,
                            prediction=prediction, zero_terminal_snr=zsnr)
    for path in (saved.content, saved.style):
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        assert {k: meta.get(k) for k in keys} == keys
    exts = folder_paths.folder_names_and_paths["loras"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(loras)], exts))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "unziplora", ([str(bundles)], {".safetensors"}))
    out = loaders.UnZipLoRALoader.execute("cat.safetensors")
    assert out.args[-1] == words and words in out.ui["text"][0]
    assert from_files(saved.content, saved.style).prediction == words


def test_foreign_files_are_read_by_kohya_and_modelspec_keys():
    from unziplora_pack.unziplora import model_card

    assert model_card.describe_prediction({"ss_v_parameterization": "True", "ss_zero_terminal_snr": "True"}) == \
        "v-prediction, zero terminal SNR"
    assert model_card.describe_prediction({"modelspec.prediction_type": "epsilon"}) == "epsilon (noise) prediction"
    assert model_card.describe_prediction({"ss_network_dim": "4"}) == ""


def test_a_run_records_its_objective():
    from unziplora_pack.training.export import prediction_of_run
    from unziplora_pack.training.objective import Objective

    class Inputs:
        objective = Objective("v", torch.linspace(0.03, 14.6, 1000, dtype=torch.float64), zsnr=True)

    assert prediction_of_run(Inputs()) == {"prediction": "v", "zero_terminal_snr": True}
    assert prediction_of_run(object()) == {"prediction": "eps", "zero_terminal_snr": False}  # SDXL's default


def test_a_checkpoint_folder_that_cannot_be_written_is_named(tmp_path):
    """The job said 'Operation not permitted (disk full or not writable?)' and not where."""
    from unziplora_pack.training import faults

    class Job:
        step, total, checkpoint = 3, 10, None

    folder = str(tmp_path / "output" / "unziplora" / "checkpoints" / "0123456789ab")

    def run():
        raise PermissionError(errno.EPERM, "Operation not permitted", folder)

    with pytest.raises(OSError) as e:
        faults.explained(run, Job(), torch.device("cpu"))
    assert f"Operation not permitted: {folder} (disk full or not writable?)" in str(e.value), str(e.value)


def test_a_failed_checkpoint_write_names_its_file(tmp_path, monkeypatch):
    from unziplora_pack.training import loop

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(loop.torch, "save", refuse)
    trainer = loop.Trainer.__new__(loop.Trainer)
    trainer.checkpoint_dir = str(tmp_path)
    trainer.config = type("C", (), {"to_json": lambda self: "{}"})()
    trainer.inputs = type("I", (), {"base_fingerprint": "x"})()
    trainer.objective = type("O", (), {"state": lambda self: {}})()
    trainer.optimizer_name = "adamw"
    lora = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(lora.parameters(), lr=0.1)
    sched = type("S", (), {"state_dict": lambda self: {}})()
    state = types.SimpleNamespace(step=4, lora=lora, optimizer=opt, schedule=sched, scaler=None,
                                  gen=torch.Generator())
    with pytest.raises(OSError) as e:
        trainer.save_checkpoint(state)
    assert e.value.filename == os.path.join(str(tmp_path), "step_000004.pt"), e.value


def test_security_md_lists_everything_the_pack_writes_and_what_delete_takes():
    """SECURITY.md left out the sample image copied into input/ at start-up, and said DELETE takes 'nothing'
    while it took any body."""
    from pathlib import Path

    from unziplora_pack.nodes.sample import SAMPLE_IMAGE

    text = (Path(__file__).resolve().parents[1] / "SECURITY.md").read_text()
    writes = text.split("## What the pack writes, and where")[1].split("Nothing is written anywhere else")[0]
    assert f"`input/{SAMPLE_IMAGE}`" in writes
    delete_row = next(line for line in text.splitlines() if line.startswith("| `DELETE /unziplora/jobs/{id}/checkpoints`"))
    assert "empty body or `{}` (any field is 400)" in delete_row


def test_training_prompts_are_bounded_in_tokens_before_encoding():
    class ChunkyClip:
        def tokenize(self, text):
            chunks = [[(0, 1.0)] * 77 for _ in range(1 + len(text) // 100)]
            return {"g": chunks, "l": chunks}

        def encode_from_tokens(self, tokens, return_pooled=False):
            raise AssertionError("a refused prompt must not be encoded")

    with pytest.raises(ValueError, match="style_prompt is 10 of CLIP's 77-token chunks long: at most 8"):
        data.encode_prompts(ChunkyClip(), "A sks cat in sketch style", "A sks cat", "," * 950)


def test_a_final_file_that_cannot_be_written_is_named(tmp_path):
    from unziplora_pack.training import faults

    class Job:
        step, total, checkpoint = 10, 10, None

    target = str(tmp_path / "models" / "loras" / "unziplora")

    def export():
        raise PermissionError(errno.EACCES, "Permission denied", target)

    with pytest.raises(OSError, match=f"could not write the trained files: Permission denied: {target}"):
        faults.export_explained(export, Job(), torch.device("cpu"))
