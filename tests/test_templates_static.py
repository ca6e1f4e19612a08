"""The shipped templates and the pieces they rely on, without a browser: no nulls where the frontend's workflow
schema wants a value, the model download metadata, the sample image and its copy into input/, the resume
plumbing that replaced the resume_from widget."""

from __future__ import annotations

import importlib
import json
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
                nodes.UnZipLoRALoadFiles, nodes.UnZipLoRALoadBLoRA):
        schema = cls.define_schema()
        for o in schema.outputs:
            assert o.display_name, f"{schema.node_id}: output {o.id} shows as its type"
