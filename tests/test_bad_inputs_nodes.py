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
