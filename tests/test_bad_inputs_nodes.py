"""Bad values for the nodes' inputs and hostile files in the models folders, through each node's execute().

ComfyUI 0.3.75 passes any string for a V3 combo, so these are exactly what an API client can send. Each case
asserts the message names the input as the node shows it and that no job or file was created.
"""

from __future__ import annotations

import pickle
import random
import struct
from types import SimpleNamespace

import pytest

from pair_helpers import save_random_run
from unziplora_pack.nodes import loaders, train
from unziplora_pack.nodes.apply import UnZipLoRAApply
from unziplora_pack.nodes.loaders import UnZipLoRALoader, UnZipLoRALoadBLoRA, UnZipLoRALoadFiles
from unziplora_pack.nodes.train import UnZipLoRATrain
from unziplora_pack.training.jobs import JobManager
from unziplora_pack.training.paths import PathDisplay

class FakeService:
    def __init__(self, manager):
        self.manager = manager


TRAIN_DEFAULTS = dict(model=None, clip=None, vae=None, image=None, content_prompt="A sks cat",
                      style_prompt="A cat in sketch style", combined_prompt="", name="cat", mode="unziplora", steps=12,
                      rank=4, lr_content=5e-5, lr_style=5e-5, lr_merger=5e-3, column_ratio=0.1, selections=2,
                      orth_lambda=0.5, resolution=128, seed=0, checkpoint_every=4, preview_every=0, preview_steps=2,
                      gradient_checkpointing="off", precision="auto", run_mode="background")


@pytest.fixture
def manager(tmp_path, monkeypatch):
    m = JobManager(str(tmp_path / "jobs.json"), checkpoint_root=str(tmp_path / "ckpt"))
    monkeypatch.setattr(train, "service", lambda: FakeService(m))

    def never(*a, **k):
        raise AssertionError("validation must fail before the inputs are prepared")

    monkeypatch.setattr(train, "prepare_inputs", never)
    resume(monkeypatch, None)
    return m


def resume(monkeypatch, job_id):
    """What ComfyUI hands the node as hidden inputs; the Resume route names the job in the extra data."""
    pnginfo = {train.RESUME_KEY: {"3": job_id}} if job_id is not None else None
    monkeypatch.setattr(UnZipLoRATrain, "hidden",
                        SimpleNamespace(extra_pnginfo=pnginfo, unique_id="3", prompt=None), raising=False)


def _job(m, state, **fields):
    job = m.submit("cat", lambda ctx: {}, total=4, resume_prompt={"3": {"inputs": {}}}, info={"node_id": "3"})
    m.wait(job.id, 10)
    job.state = state
    for k, v in fields.items():
        setattr(job, k, v)
    return job


TRAIN_CASES = [
    ("run_mode", "bogus", "run_mode = 'bogus' is not allowed: one of background, blocking"),
    ("run_mode", "", "run_mode = '' is not allowed"),
    ("mode", "dreambooth", "mode = 'dreambooth' is not allowed: one of unziplora"),
    ("precision", "fp8", "precision = 'fp8' is not allowed"),
    ("gradient_checkpointing", "maybe", "gradient_checkpointing = 'maybe' is not allowed"),
    ("selections", 20, "selections = 20 is not allowed: a whole number from 1 to steps (12)"),
    ("selections", 0, "selections = 0 is not allowed"),
    ("steps", 0, "steps = 0 is not allowed"),
    ("rank", 0, "rank = 0 is not allowed"),
    ("lr_content", "fast", "lr_content = 'fast' is not allowed: a finite number"),
    ("lr_style", float("nan"), "lr_style = nan is not allowed"),
    ("lr_merger", 5.0, "lr_merger = 5.0 is not allowed"),
    ("column_ratio", 0.0, "column_ratio = 0.0 is not allowed"),
    ("orth_lambda", -1.0, "orth_lambda = -1.0 is not allowed"),
    ("resolution", 100, "resolution = 100 is not allowed: a multiple of 64"),
    ("seed", -5, "seed = -5 is not allowed"),
    ("checkpoint_every", -1, "checkpoint_every = -1 is not allowed"),
    ("name", "CON", "CON is a reserved device name on Windows"),
    ("name", "nul.txt", "nul is a reserved device name on Windows"),
    ("name", "Com1", "Com1 is a reserved device name on Windows"),
    ("name", "LPT9.v2", "LPT9 is a reserved device name on Windows"),
    ("name", "aux", "aux is a reserved device name"),
    ("name", "prn.backup.final", "prn is a reserved device name"),
    ("name", "../evil", "name = '../evil' is not allowed"),
    ("name", "", "name = '' is not allowed"),
    ("name", "cat.", "may not end with '.'"),
    ("name", "a" * 81, "1-80 letters"),
    ("name", "ca t", "name = 'ca t' is not allowed"),
    ("content_prompt", "   ", "content_prompt is empty"),
    ("style_prompt", "", "style_prompt is empty"),
    ("style_prompt", "A sks cat", "content_prompt and style_prompt are the same text"),
    ("style_prompt", "  a SKS   cat. ", "content_prompt and style_prompt are the same text"),
    ("resume", "bogus", "Resume of job 'bogus': no job with that id"),
    ("resume", "0123456789ab", "Resume of job '0123456789ab': no job with that id"),
]


@pytest.mark.parametrize("field, value, words", TRAIN_CASES, ids=[f"{c[0]}={str(c[1])[:20]}" for c in TRAIN_CASES])
def test_train_node_refuses_bad_values_naming_the_input(manager, monkeypatch, field, value, words):
    if field == "resume":
        resume(monkeypatch, value)
    with pytest.raises(ValueError) as e:
        UnZipLoRATrain.execute(**(TRAIN_DEFAULTS if field == "resume" else {**TRAIN_DEFAULTS, field: value}))
    assert words in str(e.value), str(e.value)
    assert manager.list() == [], "nothing may be queued"


@pytest.mark.parametrize("setup, words", [
    (lambda m: _job(m, "done", checkpoint=__file__), "is done; only cancelled, failed or interrupted jobs"),
    (lambda m: _job(m, "cancelled", checkpoint=None), "has no checkpoint"),
    (lambda m: _job(m, "cancelled", checkpoint="/gone/step_000004.pt"), "has no checkpoint"),
    (lambda m: _job(m, "cancelled", checkpoint=__file__, continued_by="fedcba987654"),
     "was already resumed; it continues as job fedcba987654"),
])
def test_train_node_refuses_resumes_that_would_start_a_second_job(manager, monkeypatch, setup, words):
    job = setup(manager)
    resume(monkeypatch, job.id)
    with pytest.raises(ValueError, match="Resume of job") as e:
        UnZipLoRATrain.execute(**TRAIN_DEFAULTS)
    assert words in str(e.value)
    assert len(manager.list()) == 1


def test_naive_mode_may_share_one_prompt(manager):
    """Without prompt separation both LoRAs read the combined prompt: equal prompts are no contradiction."""
    with pytest.raises(AssertionError, match="before the inputs are prepared"):
        UnZipLoRATrain.execute(**{**TRAIN_DEFAULTS, "mode": "naive", "style_prompt": "A sks cat"})


def test_apply_mode_must_be_one_of_its_choices():
    with pytest.raises(ValueError, match="mode = 'everything' is not allowed: one of both, content, style"):
        UnZipLoRAApply.execute(None, "everything", None, 1.0, 1.0)


# ------------------------------------------------------------------------------------------------- files


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """models/loras and models/unziplora in a temp base, with one good trained run in them."""
    import folder_paths

    models = tmp_path / "srv" / "secret" / "models"
    loras, bundles = models / "loras", models / "unziplora"
    shapes = {"output_blocks.0.1.transformer_blocks.0.attn2.to_k": (2048, 64),
              "output_blocks.1.1.transformer_blocks.0.attn2.to_v": (2048, 64)}
    save_random_run(loras / "unziplora", "cat", shapes, seed=1, bundle_directory=bundles)
    exts = folder_paths.folder_names_and_paths["loras"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(loras)], exts))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "unziplora", ([str(bundles)], {".safetensors"}))
    monkeypatch.setattr(loaders, "path_display", lambda: PathDisplay([(str(models), "models")]), raising=False)
    return loras, bundles


def _truncated_header(path):
    path.write_bytes(struct.pack("<Q", 5000) + b'{"__metadata__":')


def _truncated_data(path, good):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"lora_unet_x.lora_down.weight": _Payload(str(marker))}, f, protocol=2)


FILE_CASES = [
    ("truncated-header", lambda p, good, m: _truncated_header(p), "cut short"),
    ("truncated-data", lambda p, good, m: _truncated_data(p, good), "not a readable safetensors file"),
    ("random-bytes", lambda p, good, m: p.write_bytes(random.Random(0).randbytes(4096)), "refused to load"),
    ("empty-file", lambda p, good, m: p.write_bytes(b""), "refused to load"),
    ("pickle-payload", lambda p, good, m: _pickle(p, m), "pickled objects are never unpickled"),
    ("text-file", lambda p, good, m: p.write_text("not a model"), "refused to load"),
]


@pytest.mark.parametrize("input_name", ["content_lora", "style_lora"])
@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_load_lora_pair_names_the_bad_file_as_picked(folders, tmp_path, case, input_name):
    loras, _ = folders
    _, make, words = case
    bad = loras / "downloads" / "bad.safetensors"
    bad.parent.mkdir(exist_ok=True)
    marker = tmp_path / "pwned"
    make(bad, loras / "unziplora" / "cat_content.safetensors", marker)
    picked = {"content_lora": "unziplora/cat_content.safetensors", "style_lora": "unziplora/cat_style.safetensors"}
    picked[input_name] = "downloads/bad.safetensors"
    with pytest.raises(ValueError) as e:
        UnZipLoRALoadFiles.execute(picked["content_lora"], picked["style_lora"], "none")
    msg = str(e.value)
    assert msg.startswith(f"{input_name} = 'downloads/bad.safetensors': bad.safetensors"), msg
    assert words in msg, msg
    assert "secret" not in msg and str(tmp_path) not in msg, "no server path in the message"
    assert not marker.exists(), "the pickle payload ran"


def test_load_lora_pair_mergers_must_be_a_choice(folders):
    with pytest.raises(ValueError, match="mergers = 'bogus' is not allowed: one of auto, none"):
        UnZipLoRALoadFiles.execute("unziplora/cat_content.safetensors", "unziplora/cat_style.safetensors", "bogus")


def test_load_lora_pair_file_not_in_its_list(folders):
    with pytest.raises(ValueError, match="content_lora = 'missing.safetensors' is not allowed"):
        UnZipLoRALoadFiles.execute("missing.safetensors", "unziplora/cat_style.safetensors", "none")


def test_blora_bad_file_is_named(folders):
    loras, _ = folders
    _truncated_header(loras / "b.safetensors")
    with pytest.raises(ValueError, match=r"^lora = 'b.safetensors': b.safetensors: the file is cut short"):
        UnZipLoRALoadBLoRA.execute("b.safetensors")


def test_bundle_whose_loras_are_gone_names_it_without_server_paths(folders, tmp_path):
    loras, _ = folders
    (loras / "unziplora" / "cat_style.safetensors").unlink()
    with pytest.raises(ValueError) as e:
        UnZipLoRALoader.execute("cat.safetensors")
    msg = str(e.value)
    assert msg.startswith("bundle = 'cat.safetensors': cat.safetensors: its style LoRA 'cat_style.safetensors'"), msg
    assert "models/loras/unziplora" in msg and str(tmp_path) not in msg, msg


def test_damaged_bundle_is_named(folders, tmp_path):
    _, bundles = folders
    _truncated_data(bundles / "cat.safetensors", bundles / "cat.safetensors")
    with pytest.raises(ValueError, match=r"^bundle = 'cat.safetensors': cat.safetensors: (the file is cut short|not a readable safetensors)"):
        UnZipLoRALoader.execute("cat.safetensors")


# ------------------------------------------------------------------------------------------------- issue 20
# Each case below failed on the code before issue 20 (crashed, was accepted, or blamed the wrong thing).

import math  # noqa: E402

import torch  # noqa: E402

from unziplora_pack.nodes.inspect import UnZipLoRAInspect  # noqa: E402
from unziplora_pack.nodes.prompts import UnZipLoRAPrompts  # noqa: E402
from unziplora_pack.nodes.score import UnZipLoRAScore  # noqa: E402
from unziplora_pack.unziplora import pair as pairs  # noqa: E402
from unziplora_pack.unziplora.lora_formats import LoRAState, LoRAWeights  # noqa: E402
from unziplora_pack.unziplora.render import render_table  # noqa: E402


class FakeClipVision:
    """Embeds an image as its mean colour (plus a constant, so no embedding is zero): enough to rank samples."""

    def encode_image(self, images, crop=True):
        mean = images[..., :3].float().mean(dim=(1, 2))
        return {"image_embeds": torch.cat([mean, torch.ones(mean.shape[0], 1)], dim=1)}


def _flat(*colours) -> torch.Tensor:
    return torch.stack([torch.tensor(c, dtype=torch.float32).expand(32, 32, 3) for c in colours])


REF = _flat((0.8, 0.2, 0.2))


def test_score_crop_outside_its_combo_is_refused_at_queue_and_run_time():
    words = "crop = 'stretchy' is not allowed: one of center, stretch"
    assert UnZipLoRAScore.validate_inputs(crop="stretchy") == words
    with pytest.raises(ValueError, match=words):
        UnZipLoRAScore.execute(FakeClipVision(), REF, style_images=REF, crop="stretchy")


@pytest.mark.parametrize("field, value, words", [
    ("reference", torch.zeros(0, 32, 32, 3), "reference is an empty batch"),
    ("reference", [], "reference is not an IMAGE batch [N, H, W, 3] (got list)"),
    ("style_images", torch.zeros(0, 32, 32, 3), "style_images is an empty batch"),
    ("style_images", [], "style_images is not an IMAGE batch"),
    ("content_images", torch.zeros(65, 8, 8, 3), "content_images is a batch of 65 images: at most 64"),
    ("reference", _flat((math.nan, 0.0, 0.0)), "reference: image 0 of the batch has NaN or infinite pixels"),
])
def test_score_refuses_empty_and_odd_batches_naming_the_input(field, value, words):
    inputs = {"reference": REF, "style_images": _flat((0.7, 0.3, 0.2))}
    inputs[field] = value
    with pytest.raises(ValueError) as e:
        UnZipLoRAScore.execute(FakeClipVision(), **inputs)
    assert words in str(e.value), str(e.value)


def test_score_typed_value_for_an_image_is_refused_at_queue_time():
    assert UnZipLoRAScore.validate_inputs(reference=[]).startswith("reference = [] is not allowed: connect it")


def test_score_sets_an_all_nan_sample_apart():
    samples = _flat((0.1, 0.9, 0.9), (math.nan, math.nan, math.nan), (0.8, 0.25, 0.2))
    out = UnZipLoRAScore.execute(FakeClipVision(), REF, style_images=samples, labels="a, nan, c")
    style, _, _, best, _, report = out.args
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in report.splitlines()[1:]}
    assert rows["nan"] == "NaN image" and "nan" not in rows["a"] + rows["c"], report
    assert best == 2, "the best row is a scored one"
    assert math.isfinite(style)
    clean = UnZipLoRAScore.execute(FakeClipVision(), REF, style_images=samples[[0, 2]]).args[0]
    assert style == pytest.approx(clean), "the NaN row is left out of the mean"


def test_score_labels_bounded_at_queue_and_run_time():
    long_labels = "x" * 100_000
    message = UnZipLoRAScore.validate_inputs(labels=long_labels)
    assert message.startswith("labels is 100,000 characters long: at most 1,000"), message
    with pytest.raises(ValueError, match="labels is 100,000 characters long"):
        UnZipLoRAScore.execute(FakeClipVision(), REF, style_images=REF, labels=long_labels)
    with pytest.raises(ValueError, match="is 41 characters: a row name may have at most 40"):
        UnZipLoRAScore.execute(FakeClipVision(), REF, style_images=REF, labels="y" * 41)


def test_no_table_is_drawn_past_its_bound():
    with pytest.raises(ValueError, match="the score table would be .* px: at most 4096"):
        render_table("t", ["run", "style"], [["z" * 500, "0.5"]])


def _pair_with(style_weights: dict, fname="style.safetensors") -> pairs.ContentStyleHandle:
    g = torch.Generator().manual_seed(0)
    path = "output_blocks.1.1.transformer_blocks.0.attn2.to_k"
    good = LoRAState("/srv/secret/content.safetensors")
    good[path] = LoRAWeights(torch.randn(4, 64, generator=g), torch.randn(32, 4, generator=g), 1.0, "k")
    bad = LoRAState(f"/srv/secret/{fname}")
    for p, (down, up) in style_weights.items():
        bad[p] = LoRAWeights(down, up, 1.0, "k")
    return pairs.ContentStyleHandle("x", pairs.PairSide("content", good), pairs.PairSide("style", bad), kind="files")


def test_inspect_shows_nan_weights_and_names_the_file():
    path = "output_blocks.1.1.transformer_blocks.0.attn2.to_k"
    up = torch.randn(32, 4)
    up[3, 0] = math.nan
    image, summary = UnZipLoRAInspect.execute(_pair_with({path: (torch.randn(4, 64), up)})).args
    assert "style LoRA style.safetensors: 1 of 1 linears hold NaN or infinite weights" in summary, summary
    assert "nan" in summary.splitlines()[-1] and "/srv/secret" not in summary
    assert image.shape[-1] == 3 and torch.isfinite(image).all()


@pytest.mark.parametrize("value", ["pair", 5, {"kind": "files"}])
def test_inspect_refuses_what_is_not_a_pair(value):
    assert UnZipLoRAInspect.validate_inputs(pair=value).startswith(f"pair = {value!r} is not allowed: connect it")
    with pytest.raises(ValueError, match=r"pair = .* is not allowed: connect it to the pair output"):
        UnZipLoRAInspect.execute(value)


def test_vector_alpha_blames_the_style_file(folders):
    from safetensors.torch import load_file, save_file

    loras, _ = folders
    good = loras / "unziplora" / "cat_style.safetensors"
    tensors = load_file(str(good))
    alpha_key = next(k for k in tensors if k.endswith(".alpha"))
    tensors[alpha_key] = torch.ones(4)
    save_file(tensors, str(loras / "vector_alpha.safetensors"))
    with pytest.raises(ValueError) as e:
        UnZipLoRALoadFiles.execute("unziplora/cat_content.safetensors", "vector_alpha.safetensors", "none")
    msg = str(e.value)
    assert msg.startswith("style_lora = 'vector_alpha.safetensors': vector_alpha.safetensors: "), msg
    assert "holds 4 values: a LoRA's alpha is one number" in msg, msg


class ExplodingClip:
    def tokenize(self, text):
        raise AssertionError("a refused prompt must not reach the tokenizer")


class ChunkyClip:
    """A tokenizer result as ComfyUI's SDXL CLIP gives it: {encoder: [77-token chunk, ...]}."""

    def tokenize(self, text):
        chunks = [[(0, 1.0)] * 77 for _ in range(1 + len(text) // 100)]
        return {"g": chunks, "l": chunks}

    def encode_from_tokens_scheduled(self, tokens):
        raise AssertionError("a refused prompt must not be encoded")


@pytest.mark.parametrize("field", ["prompt", "content_prompt", "style_prompt", "negative_prompt"])
def test_prompts_node_bounds_prompt_length_before_clip(field):
    values = {"prompt": "a", "content_prompt": "", "style_prompt": "", "negative_prompt": ""}
    values[field] = "w " * 50_000
    words = f"{field} is 100,000 characters long: at most 2,000 are allowed"
    assert UnZipLoRAPrompts.validate_inputs(**values).startswith(words)
    with pytest.raises(ValueError, match=words):
        UnZipLoRAPrompts.execute(ExplodingClip(), **values)


def test_prompts_node_bounds_tokens_before_encoding():
    with pytest.raises(ValueError, match="prompt is 20 of CLIP's 77-token chunks long: at most 8"):
        UnZipLoRAPrompts.execute(ChunkyClip(), "!" * 1950, "", "", "")


def test_prompts_hand_rolled_check_replaced_by_the_shared_one():
    words = "empty_negative = 'nothing' is not allowed: one of encode, zeros"
    assert UnZipLoRAPrompts.validate_inputs(empty_negative="nothing") == words
    with pytest.raises(ValueError, match=words):
        UnZipLoRAPrompts.execute(ExplodingClip(), "a", "", "", "", empty_negative="nothing")


@pytest.mark.parametrize("field, value, words", [
    ("content_prompt", "A sks cat " * 10_000, "content_prompt is 100,000 characters long: at most 2,000"),
    ("combined_prompt", "x" * 2001, "combined_prompt is 2,001 characters long"),
    ("mode", "bogus", "mode = 'bogus' is not allowed: one of unziplora"),
    ("run_mode", "later", "run_mode = 'later' is not allowed: one of background, blocking"),
    ("name", "CON", "CON is a reserved device name on Windows"),
    ("selections", 20, "selections = 20 is not allowed: a whole number from 1 to steps (12)"),
    ("style_prompt", "A sks cat", "content_prompt and style_prompt are the same text"),
])
def test_train_refuses_at_queue_time(field, value, words):
    keys = ("content_prompt", "style_prompt", "combined_prompt", "name", "mode", "steps", "selections", "resolution",
            "gradient_checkpointing", "precision", "run_mode")
    values = {k: TRAIN_DEFAULTS[k] for k in keys}
    values[field] = value
    message = UnZipLoRATrain.validate_inputs(**values)
    assert message is not True and words in message, message
    assert UnZipLoRATrain.validate_inputs(**{k: TRAIN_DEFAULTS[k] for k in keys}) is True


def test_train_refuses_a_long_prompt_at_run_time(manager):
    with pytest.raises(ValueError, match="content_prompt is 100,000 characters long"):
        UnZipLoRATrain.execute(**{**TRAIN_DEFAULTS, "content_prompt": "A sks cat " * 10_000})
    assert manager.list() == []


def _pnginfo(monkeypatch, pnginfo):
    monkeypatch.setattr(UnZipLoRATrain, "hidden", SimpleNamespace(extra_pnginfo=pnginfo, unique_id="3", prompt=None),
                        raising=False)


@pytest.mark.parametrize("pnginfo, words", [
    ({train.RESUME_KEY: "0123456789ab"}, "extra_pnginfo.unziplora_resume = '0123456789ab' is not allowed: an object"),
    ({train.RESUME_KEY: ["3", "0123456789ab"]}, "extra_pnginfo.unziplora_resume = ['3', '0123456789ab'] is not allowed"),
    ({train.RESUME_KEY: {"3": 123456789012}}, "extra_pnginfo.unziplora_resume['3'] = 123456789012 is not allowed: a job id"),
    ({train.RESUME_KEY: {"3": None}}, None),  # None: nothing asked for this node (a fresh run)
])
def test_train_refuses_resume_extra_data_of_the_wrong_shape(manager, monkeypatch, pnginfo, words):
    _pnginfo(monkeypatch, pnginfo)
    if words is None:
        with pytest.raises(AssertionError, match="before the inputs are prepared"):  # got as far as a fresh run
            UnZipLoRATrain.execute(**TRAIN_DEFAULTS)
        return
    with pytest.raises(ValueError) as e:
        UnZipLoRATrain.execute(**TRAIN_DEFAULTS)
    assert words in str(e.value), str(e.value)
    assert manager.list() == []


def test_train_refuses_to_resume_a_job_another_train_node_started(manager, monkeypatch):
    job = _job(manager, "cancelled", checkpoint=__file__)
    job.info["node_id"] = "7"
    _pnginfo(monkeypatch, {train.RESUME_KEY: {"3": job.id}})
    with pytest.raises(ValueError, match=f"Resume of job '{job.id}': it was started by train node 7, not by this one"):
        UnZipLoRATrain.execute(**TRAIN_DEFAULTS)
    assert len(manager.list()) == 1


def test_node_errors_carry_builtin_types(manager, monkeypatch):
    """ComfyUI shows module + class of the exception; the pack's modules are named after the server's folders."""
    resume(monkeypatch, "0123456789ab")
    with pytest.raises(Exception) as e:
        UnZipLoRATrain.execute(**TRAIN_DEFAULTS)
    assert type(e.value) is ValueError and type(e.value).__module__ == "builtins", type(e.value)
    assert "Resume of job '0123456789ab': no job with that id" in str(e.value)


def test_every_node_validates_at_queue_time_through_its_schema():
    from unziplora_pack.nodes import UnZipLoRAExtension
    import asyncio

    for cls in asyncio.run(UnZipLoRAExtension().get_node_list()):
        assert "validate_inputs" in cls.__dict__, f"{cls.__name__} has no validate_inputs"
        assert getattr(cls.execute, "__wrapped__", None) is not None, f"{cls.__name__}.execute is not plain_errors"


def test_train_keeps_the_schema_bounds_of_inputs_its_validate_inputs_takes():
    """ComfyUI skips its own min / max for inputs a validate_inputs takes: selections' max (100) must still hold."""
    message = UnZipLoRATrain.validate_inputs(steps=600, selections=150, mode="unziplora", resolution=128)
    assert message == "selections = 150 is not allowed: from 1 to 100", message
