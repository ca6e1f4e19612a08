"""Issue 20 through a real ComfyUI (either host): bad values are refused by POST /prompt itself, through each
node's V3 validate_inputs, before any model loads; what can only be judged at run time (the resume extra data)
fails the node with a message naming it and an exception type without the server's folders."""

from __future__ import annotations

import json

import pytest

from comfy_server import PromptRejected, events_of
from test_train_server import _sample_image, train_graph

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def live(comfy_server, tiny_checkpoint):
    """The session's server (nothing here trains, restarts or changes a setting) with a few files of its own."""
    base = comfy_server.base_dir
    if not (base / "input" / "cat.png").is_file():
        _sample_image(base / "input" / "cat.png", 160)  # what test_train_server puts there too
    (base / "models" / "clip_vision").mkdir(parents=True, exist_ok=True)
    (base / "models" / "clip_vision" / "never_loaded.safetensors").write_bytes(b"not loaded: refused before")
    (base / "models" / "loras" / "a.safetensors").write_bytes(b"not loaded: refused before")
    return {"server": comfy_server, "base": base, "ckpt": tiny_checkpoint.name}


def score_graph(**inputs) -> dict:
    values = {"clip_vision": ["1", 0], "reference": ["2", 0], "style_images": ["2", 0], "labels": "", "crop": "center"}
    values.update(inputs)
    return {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "never_loaded.safetensors"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
            "3": {"class_type": "UnZipLoRAScore", "inputs": values}}


def prompts_graph(ckpt, **inputs) -> dict:
    values = {"clip": ["1", 1], "prompt": "a sks cat", "content_prompt": "", "style_prompt": "", "negative_prompt": "",
              "empty_negative": "encode"}
    values.update(inputs)
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "3": {"class_type": "UnZipLoRAPrompts", "inputs": values},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}


QUEUE_CASES = [
    ("train-100k-prompt", lambda c: train_graph(c, content_prompt="A sks cat " * 10_000),
     "content_prompt is 100,000 characters long: at most 2,000"),
    ("train-mode", lambda c: train_graph(c, mode="dreambooth"), "mode = 'dreambooth' is not allowed: one of unziplora"),
    ("train-name", lambda c: train_graph(c, name="../evil"), "name = '../evil' is not allowed"),
    ("train-selections", lambda c: train_graph(c, selections=20), "selections = 20 is not allowed"),
    ("prompts-100k", lambda c: prompts_graph(c, prompt="w " * 50_000), "prompt is 100,000 characters long"),
    ("prompts-empty-negative", lambda c: prompts_graph(c, empty_negative="nothing"),
     "empty_negative = 'nothing' is not allowed: one of encode, zeros"),
    ("score-crop", lambda c: score_graph(crop="stretchy"), "crop = 'stretchy' is not allowed: one of center, stretch"),
    ("score-labels-100k", lambda c: score_graph(labels="x" * 100_000), "labels is 100,000 characters long"),
    ("score-reference-typed", lambda c: score_graph(reference={"__value__": []}), "reference = [] is not allowed"),
    ("inspect-not-a-pair", lambda c: {"1": {"class_type": "UnZipLoRAInspect", "inputs": {"pair": "cat"}}},
     "pair = 'cat' is not allowed: connect it to a node's UNZIPLORA_PAIR output"),
    ("pair-mergers", lambda c: {"1": {"class_type": "UnZipLoRALoadFiles", "inputs": {
        "content_lora": "a.safetensors", "style_lora": "a.safetensors", "mergers": "bogus"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}, "mergers = 'bogus' is not allowed"),
]


@pytest.mark.parametrize("case", QUEUE_CASES, ids=[c[0] for c in QUEUE_CASES])
def test_bad_values_are_refused_when_queued(live, case):
    _, graph, words = case
    client = live["server"].client()
    before = client.get_json("/unziplora/jobs")["jobs"]
    with pytest.raises(PromptRejected) as e:
        client.queue(graph(live["ckpt"]))
    body = e.value.body
    details = [err.get("details", "") for node in (body.get("node_errors") or {}).values() for err in node["errors"]]
    assert any(words in d for d in details), json.dumps(body)[:1500]
    assert str(live["base"]) not in json.dumps(body)
    assert client.get_json("/unziplora/jobs")["jobs"] == before
    assert client.queue_state()["queue_running"] == [], "nothing ran"


@pytest.mark.parametrize("extra, words", [
    ({"unziplora_resume": "0123456789ab"}, "extra_pnginfo.unziplora_resume = '0123456789ab' is not allowed: an object"),
    ({"unziplora_resume": {"3": 42}}, "extra_pnginfo.unziplora_resume['3'] = 42 is not allowed: a job id"),
    ({"unziplora_resume": {"3": "0123456789ab"}}, "Resume of job '0123456789ab': no job with that id"),
], ids=["not-an-object", "id-not-a-string", "unknown-job"])
def test_resume_extra_data_is_refused_by_name_with_a_plain_exception_type(live, extra, words):
    client = live["server"].client()
    before = client.get_json("/unziplora/jobs")["jobs"]
    with client.follow() as events:
        pid = client.queue(train_graph(live["ckpt"]), extra_data={"extra_pnginfo": extra})
        seen = events.until_done(pid, timeout=400)
    errors = events_of(seen, "execution_error", pid)
    assert errors and words in errors[0]["exception_message"], errors
    assert errors[0]["exception_type"] == "ValueError", errors[0]["exception_type"]  # no module path of the server
    history = json.dumps(client.history(pid))
    assert str(live["base"]) not in history.split('"traceback"')[0]
    assert client.get_json("/unziplora/jobs")["jobs"] == before, "it must not start a fresh run"
