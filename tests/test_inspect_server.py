"""Inspect in a live ComfyUI server: Loader -> Inspect runs as an output node, shows its picture on the node and
hands it on as an IMAGE that stock nodes save."""

from __future__ import annotations

import io
import uuid

import pytest
from pair_helpers import attention_shapes, save_random_run

from comfy_server import _tiny_sdxl_module, events_of

pytestmark = pytest.mark.server


def test_loader_to_inspect_shows_and_saves_the_map(comfy_server, comfy_client):
    from PIL import Image

    name = f"insp_{uuid.uuid4().hex[:8]}"
    models = comfy_server.base_dir / "models"
    shapes = attention_shapes(_tiny_sdxl_module().UNET_CONFIG)
    save_random_run(models / "loras" / "unziplora", name, shapes, seed=2, bundle_directory=models / "unziplora")
    graph = {
        "1": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": f"{name}.safetensors"}},
        "2": {"class_type": "UnZipLoRAInspect", "inputs": {"pair": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": name}},
    }
    pid, events, entry = comfy_client.run(graph, timeout=120)
    assert not events_of(events, "execution_error", pid), events_of(events, "execution_error", pid)
    assert entry.get("status", {}).get("status_str") == "success", entry.get("status")
    shown = entry["outputs"]["2"]["images"]  # the node's own preview
    saved = entry["outputs"]["3"]["images"]
    assert shown[0]["type"] == "temp" and saved[0]["type"] == "output"
    with Image.open(io.BytesIO(comfy_client.view(saved[0]["filename"], saved[0].get("subfolder", ""), "output"))) as im:
        assert im.size[0] == 1200 and im.size[1] > 600  # 11 block rows
