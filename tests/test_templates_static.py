"""The shipped templates and the pieces they rely on, without a browser: no nulls where the frontend's workflow
schema wants a value, the model download metadata, the sample image and its copy into input/, the resume
plumbing that replaced the resume_from widget."""

from __future__ import annotations

import importlib
import json
import re
import sys

import pytest

from comfy_server import REPO

sys.path.insert(0, str(REPO / "scripts"))
import make_workflows  # noqa: E402

TEMPLATES = sorted((REPO / "example_workflows").glob("*.json"))


def test_every_use_has_a_template():
    shipped = {p.stem for p in TEMPLATES}
    assert set(make_workflows.WORKFLOWS) <= shipped <= set(make_workflows.WORKFLOWS) | set(
        make_workflows.OPTIONAL_WORKFLOWS), sorted(shipped)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_has_no_schema_nulls_and_offers_the_model(path):
    wf = json.loads(path.read_text())
    assert make_workflows.find_nulls(wf) == []
    loaders = [n for n in wf["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    assert loaders, "every template starts from a checkpoint"
    for n in loaders:
        assert n["widgets_values"][0] == make_workflows.CKPT
        (model,) = n["properties"]["models"]
        assert model["name"] == make_workflows.CKPT and model["directory"] == "checkpoints"
        assert model["url"].startswith("https://") and model["url"].endswith("/" + make_workflows.CKPT)
    # one Note per group, every node inside a group, no two groups overlapping
    notes = [n for n in wf["nodes"] if n["type"] == "Note"]
    assert notes and len(notes) == len(wf["groups"]), (len(notes), len(wf["groups"]))
    boxes = [g["bounding"] for g in wf["groups"]]
    for n in wf["nodes"]:
        x, y = n["pos"]
        assert any(b[0] <= x and x + n["size"][0] <= b[0] + b[2] and b[1] <= y and y + n["size"][1] <= b[1] + b[3]
                   for b in boxes), f"{n['type']} #{n['id']} is outside every group"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
            assert apart, f"groups overlap: {a} {b}"
    images = [n for n in wf["nodes"] if n["type"] == "LoadImage"]
    assert all(n["widgets_values"][0] == make_workflows.SAMPLE_IMAGE for n in images)


MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf")  # 1.58's scan


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_template_names_no_model_that_cannot_be_downloaded(path):
    """Issue 21.2/21.3: every widget value the frontend reads as a model file comes with download metadata
    (properties.models: name, directory, https URL); the trained run to load is left for the user to pick."""
    wf = json.loads(path.read_text())
    for n in wf["nodes"]:
        values = n.get("widgets_values") or []
        values = values.values() if isinstance(values, dict) else values
        declared = {m["name"]: m for m in n.get("properties", {}).get("models", [])}
        for v in values:
            if isinstance(v, str) and v.lower().endswith(MODEL_EXTENSIONS):
                assert v in declared, f"{n['type']} #{n['id']} names {v!r} with no way to download it"
                assert declared[v]["url"].startswith("https://huggingface.co/") and declared[v]["directory"]
        if n["type"] in ("UnZipLoRALoader", "UnZipLoRALoadFiles", "UnZipLoRALoadBLoRA"):
            assert not [v for v in values if isinstance(v, str) and v.endswith(".safetensors")], n
    for n in wf["nodes"]:
        if n["type"] == "CLIPVisionLoader":
            assert n["properties"]["models"] == [make_workflows.CLIP_VISION_MODEL]


def test_find_nulls_names_the_paths():
    assert make_workflows.find_nulls({"floatingLinks": None, "extra": None, "nodes": [
        {"inputs": [{"link": None, "slot_index": None}]}]}) == [".floatingLinks", ".nodes[0].inputs[0].slot_index"]


def test_sample_image_is_copied_once_and_never_overwrites(tmp_path, pack):
    sample = importlib.import_module(f"{pack.__name__}.nodes.sample")
    src = REPO / "example_workflows" / sample.SAMPLE_IMAGE
    assert src.is_file() and src.stat().st_size < 200_000
    written = sample.install_sample_image(str(tmp_path))
    assert written and (tmp_path / sample.SAMPLE_IMAGE).read_bytes() == src.read_bytes()
    (tmp_path / sample.SAMPLE_IMAGE).write_bytes(b"the user's own picture")
    assert sample.install_sample_image(str(tmp_path)) is None
    assert (tmp_path / sample.SAMPLE_IMAGE).read_bytes() == b"the user's own picture"


def test_resume_travels_in_the_extra_data_not_in_a_widget(pack):
    train = importlib.import_module(f"{pack.__name__}.nodes.train")
    routes = importlib.import_module(f"{pack.__name__}.nodes.routes")
    names = [i.id for i in train.UnZipLoRATrain.define_schema().inputs]
    assert "resume_from" not in names
    assert train.resume_request({train.RESUME_KEY: {"3": "abc"}}, "3") == "abc"
    assert train.resume_request({train.RESUME_KEY: {"4": "abc"}}, "3") == ""
    assert train.resume_request(None, "3") == ""

    class Job:
        id = "j1"
        info = {"node_id": "3", "workflow_id": "w"}

    extra = routes.resume_extra(Job)["extra_pnginfo"]
    assert extra == {train.RESUME_KEY: {"3": "j1"}, "workflow": {"id": "w"}}


def test_outputs_have_names(pack):
    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    for cls in (nodes.UnZipLoRATrain, nodes.UnZipLoRALoader, nodes.UnZipLoRAPrompts, nodes.UnZipLoRAApply,
                nodes.UnZipLoRALoadFiles, nodes.UnZipLoRALoadBLoRA, nodes.UnZipLoRAScore, nodes.UnZipLoRAInspect):
        schema = cls.define_schema()
        for o in schema.outputs:
            assert o.display_name, f"{schema.node_id}: output {o.id} shows as its type"


DOCS = sorted((REPO / "web" / "docs").glob("*.md"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.stem)
def test_help_page_reads_in_a_narrow_panel(path):
    """Issue 21.5: the node help panels are ~285 px wide (1.58.1's Info tab, 1.32.9's node library): tables of
    more than two columns are cut off or wrapped a letter per line there, and a long unbroken code span sticks
    out. The browser check (tests/test_browser.py::test_help_page) measures the Train page on both frontends."""
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert not [r for r in rows if r.count("|") > 3], f"{path.name}: a table of more than two columns"
    spans = [s for s in re.findall(r"`([^`]+)`", text) if " " not in s and len(s) > 40]
    assert not spans, f"{path.name}: unbreakable code spans {spans}"
    if path.stem == "UnZipLoRATrain":
        assert text.count("\n## The panel\n") == 1 and "sparkline" not in text



def test_every_template_has_its_place_in_browse_templates():
    """web/js/templates.js lists the templates Train first (the server's glob order put it third); a template
    the list lacks would go last, after the ones that need it."""
    order = re.findall(r'^\s+"([^"]+)",$', (REPO / "web" / "js" / "templates.js").read_text(), re.M)
    names = set(make_workflows.WORKFLOWS) | set(make_workflows.OPTIONAL_WORKFLOWS)
    assert names <= set(order), sorted(names - set(order))
    assert {p.stem for p in TEMPLATES} <= set(order)
    assert order[0] == make_workflows.TRAIN
