"""A real ComfyUI server with this pack: it imports, runs a stock SDXL graph on the tiny checkpoint, rejects
malformed prompts. Fixtures: tests/conftest.py (comfy_server, comfy_client, tiny_checkpoint; helpers in scripts/comfy_server.py)."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import uuid
from urllib.parse import quote

import pytest

from comfy_server import PACK_FOLDER, events_of, unknown_node_error

pytestmark = pytest.mark.server


def stock_sdxl_prompt(ckpt_name: str, prefix: str, seed: int = 0, size: int = 128) -> dict:
    """CheckpointLoaderSimple -> 2 x CLIPTextEncode -> EmptyLatentImage -> KSampler -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def _declared_node_ids(pack) -> list[str]:
    """The node ids the pack's V3 extension lists (what ComfyUI should have registered)."""
    async def ids():
        extension = await pack.comfy_entrypoint()
        return [cls.GET_SCHEMA().node_id for cls in await extension.get_node_list()]

    return asyncio.run(ids())


def test_pack_imported(comfy_server, comfy_client, pack):
    print(f"server start: {comfy_server.start_s:.1f} s, {comfy_server.url}")
    lines = comfy_server.pack_import_lines()
    assert lines, f"no import-times line for custom_nodes/{PACK_FOLDER}:\n{comfy_server.log_tail(80)}"
    assert not any("IMPORT FAILED" in line for line in lines), f"{lines}\n{comfy_server.log_tail(80)}"

    info = comfy_client.object_info()
    assert "KSampler" in info and "CheckpointLoaderSimple" in info
    module = f"custom_nodes.{PACK_FOLDER}"
    ours = sorted(k for k, v in info.items() if str(v.get("python_module", "")).startswith(module))
    assert all(k.startswith("UnZipLoRA") for k in ours), ours
    declared = _declared_node_ids(pack)
    print(f"pack nodes registered: {ours}")
    assert sorted(declared) == ours, f"declared {declared}, registered {ours}"
    if declared:
        assert any(k.startswith("UnZipLoRA") for k in info)


def test_stock_sdxl_graph(comfy_server, comfy_client, tiny_checkpoint):
    from PIL import Image

    assert tiny_checkpoint.name in comfy_client.object_info("CheckpointLoaderSimple")["CheckpointLoaderSimple"][
        "input"]["required"]["ckpt_name"][0]
    token = uuid.uuid4()
    prefix = f"smoke_{token.hex[:8]}"
    # a fresh seed and prefix: nothing is served from ComfyUI's cache if the session server ran it before
    prompt = stock_sdxl_prompt(tiny_checkpoint.name, prefix, seed=token.int % 2**32)
    prompt_id, events, entry = comfy_client.run(prompt, timeout=150)

    errors = events_of(events, "execution_error", prompt_id)
    assert not errors, errors
    executed = {d["node"] for d in events_of(events, "executing", prompt_id) if d.get("node") is not None}
    cached = {n for d in events_of(events, "execution_cached", prompt_id) for n in d.get("nodes", [])}
    assert executed | cached == set(prompt), (executed, cached)
    assert {"5", "6", "7"} <= executed  # sampling, decoding and saving really ran
    last = events[-1]
    assert last["type"] == "executing" and last["data"]["node"] is None

    assert entry.get("status", {}).get("completed") is True, entry.get("status")
    images = entry["outputs"]["7"]["images"]
    assert len(images) == 1, images
    img = images[0]
    assert img["type"] == "output" and img["filename"].startswith(prefix)
    data = comfy_client.view(img["filename"], img.get("subfolder", ""), img["type"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (128, 128)
        assert im.format == "PNG"


@pytest.mark.parametrize("case", ["missing_input", "unknown_class"])
def test_malformed_prompt_rejected(comfy_client, tiny_checkpoint, case):
    prompt = copy.deepcopy(stock_sdxl_prompt(tiny_checkpoint.name, "never"))
    if case == "missing_input":
        del prompt["5"]["inputs"]["model"]
    else:
        prompt["4"]["class_type"] = "NoSuchNode_UnZipLoRA"
    status, body = comfy_client.post_prompt(prompt)
    assert status == 400, (status, body)
    assert isinstance(body, dict) and "error" in body and "node_errors" in body, body
    if case == "missing_input":
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        node = body["node_errors"]["5"]
        assert node["class_type"] == "KSampler"
        assert any(e["type"] == "required_input_missing" and e["extra_info"]["input_name"] == "model"
                   for e in node["errors"]), node
    else:
        assert body["error"]["type"] == unknown_node_error(), body  # the host's own word for it
        assert "NoSuchNode_UnZipLoRA" in body["error"]["message"]
        assert "#4" in body["error"]["details"]
    # nothing was queued
    assert comfy_client.queue_state()["queue_pending"] == []


def test_example_workflows_are_listed_and_use_registered_nodes(comfy_server, comfy_client):
    """Browse Templates lists the pack's workflows; each is UI format, uses only known nodes, links hold."""
    from comfy_server import REPO

    listed = comfy_client.get_json("/api/workflow_templates")
    shipped = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert len(shipped) >= 3 and sorted(listed.get(PACK_FOLDER, [])) == shipped
    known = set(comfy_client.object_info())
    for name in shipped:
        wf = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
        assert (REPO / "example_workflows" / f"{name}.jpg").is_file(), f"{name} has no thumbnail"
        # each opened copy must get its own workflow id from the frontend (jobs are linked to it)
        assert "id" not in wf, f"{name} carries a fixed workflow id {wf['id']}"
        ids = {n["id"] for n in wf["nodes"]}
        # Note is the frontend's own node (never sent to the server)
        unknown = {n["type"] for n in wf["nodes"]} - known - {"Note", "MarkdownNote"}
        assert not unknown, f"{name} uses unknown node types {unknown}"
        for link in wf["links"]:
            assert link[1] in ids and link[3] in ids, f"{name}: link {link} points to a missing node"
        served = comfy_client.request("GET", f"/api/workflow_templates/{PACK_FOLDER}/{quote(name)}.json")
        assert served[0] == 200 and json.loads(served[1])["nodes"], f"{name} is not served"
