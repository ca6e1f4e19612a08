"""Regenerate example_workflows/*.json (UI format) and their .jpg thumbnails from the API graphs below.

The UI format (nodes, links, widget values in the frontend's order) is produced by the real frontend: each API
graph is loaded into ComfyUI's page in headless Chromium (app.loadApiJson), laid out, screenshotted and
serialised (app.graph.serialize()). Model and bundle names are then set to what a user will have.

    .venv/bin/python scripts/make_workflows.py
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

from comfy_server import ensure_tiny_checkpoint, make_base_dir, start_server  # noqa: E402
from sample_image import make_sketch  # noqa: E402

OUT = REPO / "example_workflows"
CKPT = "sd_xl_base_1.0.safetensors"  # what the shipped workflows name; the tiny one is used only to render them
BUNDLE = "unziplora.safetensors"  # the train node's default name
NEG = "blurry, low quality, deformed"


def _ksampler(model, pos, neg, latent, seed=0):
    return {"class_type": "KSampler", "inputs": {"model": model, "positive": pos, "negative": neg,
                                                 "latent_image": latent, "seed": seed, "steps": 30, "cfg": 6.0,
                                                 "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}}


def _tail(g: dict, nid: int, model, pos, neg, prefix: str) -> None:
    """KSampler -> VAEDecode -> SaveImage as nodes nid+1..nid+3, on the graph's one EmptyLatentImage ("99")."""
    g.setdefault("99", {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}})
    g[str(nid + 1)] = _ksampler(model, pos, neg, ["99", 0])
    g[str(nid + 2)] = {"class_type": "VAEDecode", "inputs": {"samples": [str(nid + 1), 0], "vae": ["1", 2]}}
    g[str(nid + 3)] = {"class_type": "SaveImage", "inputs": {"images": [str(nid + 2), 0], "filename_prefix": prefix}}


def _text(clip, text):
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}


def train_graph(ckpt: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "unzip_me.png"}},
        "3": {"class_type": "UnZipLoRATrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "image": ["2", 0],
            "content_prompt": "A sks cat", "style_prompt": "A cat in sketch style", "combined_prompt": "",
            "name": "unziplora", "mode": "unziplora", "steps": 600, "rank": 64, "lr_content": 5e-5,
            "lr_style": 5e-5, "lr_merger": 5e-3, "column_ratio": 0.1, "selections": 3, "orth_lambda": 0.5,
            "resolution": 1024, "seed": 0, "checkpoint_every": 200, "preview_every": 100, "preview_steps": 8,
            "gradient_checkpointing": "auto", "precision": "auto", "run_mode": "background", "resume_from": ""}},
    }


def use_graph(ckpt: str, bundle: str) -> dict:
    """One trained pair, three uses: content alone, style alone, both with three prompts."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": bundle}},
        "3": _text(["1", 1], NEG),
        # content alone: the subject somewhere new, in another style
        "10": {"class_type": "UnZipLoRAApply", "inputs": {"model": ["1", 0], "mode": "content", "content_from": ["2", 0],
                                                          "content_strength": 1.0, "style_strength": 1.0}},
        "11": _text(["1", 1], "A sks cat on the beach, watercolor painting"),
        # style alone: a new subject in the style
        "20": {"class_type": "UnZipLoRAApply", "inputs": {"model": ["1", 0], "mode": "style", "content_from": ["2", 0],
                                                          "content_strength": 1.0, "style_strength": 1.0}},
        "21": _text(["1", 1], "A dog in sketch style"),
        # both: recontextualise the image, each LoRA reading its own prompt
        "30": {"class_type": "UnZipLoRAApply", "inputs": {"model": ["1", 0], "mode": "both", "content_from": ["2", 0],
                                                          "content_strength": 1.0, "style_strength": 1.0}},
        "31": {"class_type": "UnZipLoRAPrompts", "inputs": {
            "clip": ["1", 1], "prompt": "A sks cat on a skateboard in sketch style",
            "content_prompt": "A sks cat on a skateboard", "style_prompt": "A cat on a skateboard in sketch style",
            "negative_prompt": NEG}},
    }
    _tail(g, 12, ["10", 0], ["11", 0], ["3", 0], "unziplora_content")
    _tail(g, 22, ["20", 0], ["21", 0], ["3", 0], "unziplora_style")
    _tail(g, 32, ["30", 0], ["31", 0], ["31", 1], "unziplora_both")
    return g


def cross_graph(ckpt: str, bundle_a: str, bundle_b: str) -> dict:
    """The content of one image's run with the style of another's."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": bundle_a}},
        "3": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": bundle_b}},
        "4": {"class_type": "UnZipLoRAApply", "inputs": {"model": ["1", 0], "mode": "both", "content_from": ["2", 0],
                                                         "style_from": ["3", 0], "content_strength": 1.0,
                                                         "style_strength": 1.0}},
        "5": {"class_type": "UnZipLoRAPrompts", "inputs": {
            "clip": ["1", 1], "prompt": "A sks cat in watercolor style", "content_prompt": "A sks cat",
            "style_prompt": "A cat in watercolor style", "negative_prompt": NEG}},
    }
    _tail(g, 6, ["4", 0], ["5", 0], ["5", 1], "unziplora_cross")
    return g


def main() -> int:
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS, open_app

    ckpt_path = ensure_tiny_checkpoint()
    base = make_base_dir(Path(tempfile.mkdtemp(prefix="unziplora-workflows-")), checkpoint=ckpt_path)
    make_sketch(512, 512).save(base / "input" / "unzip_me.png")
    for name in ("unziplora", "watercolor"):  # empty placeholders: the loader lists names, nothing is loaded
        (base / "models" / "unziplora").mkdir(parents=True, exist_ok=True)
        (base / "models" / "unziplora" / f"{name}.safetensors").write_bytes(b"")
    workflows = {
        "unziplora_train": train_graph(ckpt_path.name),
        "unziplora_use_content_style_both": use_graph(ckpt_path.name, BUNDLE),
        "unziplora_cross_two_images": cross_graph(ckpt_path.name, BUNDLE, "watercolor.safetensors"),
    }
    server = start_server(base)
    OUT.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 2600, "height": 1700})
            open_app(page, server.url, first_visit=True)
            page.evaluate("() => window.app.ui?.settings?.setSettingValue?.('Comfy.Minimap.Visible', false)")
            banner = page.locator("button[aria-label='Close']").first  # the 'Nodes 2.0' announcement
            if banner.count():
                banner.click()
            for name, graph in workflows.items():
                page.evaluate("""([graph, name, depth]) => {
                    const app = window.app;
                    app.nodeOutputs = {};  // no image previews carried over from the previous graph's node ids
                    app.loadApiJson(graph, name);
                    for (const n of app.graph.nodes) {
                        const c = n.widgets?.find((w) => w.name === "control_after_generate");
                        if (c) c.value = "fixed";
                    }
                }""", [graph, name, None])
                page.wait_for_timeout(600)  # let DOM widgets size their nodes before laying out
                ui = page.evaluate("""(depth) => {
                    const app = window.app, g = app.graph;
                    const cols = {};
                    for (const n of g.nodes) (cols[depth[n.id]] ??= []).push(n);
                    let x = 40;
                    for (const d of Object.keys(cols).map(Number).sort((a, b) => a - b)) {
                        let y = 60, w = 0;
                        for (const n of cols[d].sort((a, b) => a.id - b.id)) {
                            n.pos = [x, y];
                            y += n.size[1] + 70;
                            w = Math.max(w, n.size[0]);
                        }
                        x += w + 60;
                    }
                    const b = g.nodes.reduce((a, n) => [Math.min(a[0], n.pos[0]), Math.min(a[1], n.pos[1] - 30),
                        Math.max(a[2], n.pos[0] + n.size[0]), Math.max(a[3], n.pos[1] + n.size[1])],
                        [1e9, 1e9, -1e9, -1e9]);
                    // fit the graph into the middle of the canvas, clear of the side bar and the floating menus
                    const W = app.canvas.canvas.clientWidth, H = app.canvas.canvas.clientHeight;
                    const s = Math.min((W - 500) / (b[2] - b[0]), (H - 400) / (b[3] - b[1]), 1.0);
                    app.canvas.ds.scale = s;
                    app.canvas.ds.offset = [250 / s - b[0], 200 / s - b[1]];
                    g.setDirtyCanvas(true, true);
                    const r = app.canvas.canvas.getBoundingClientRect();
                    return {ui: g.serialize(), clip: {x: r.left + 250 - 20, y: r.top + 200 - 20,
                            width: (b[2] - b[0]) * s + 40, height: (b[3] - b[1]) * s + 40}};
                }""", _depths(graph))
                page.mouse.move(5, 5)
                page.wait_for_timeout(800)
                png = page.screenshot(clip=ui["clip"])
                _write_outputs(name, ui["ui"], png)
            browser.close()
    finally:
        server.stop()
    return 0


def _depths(graph: dict) -> dict:
    """Column of each node: the longest chain of links leading into it (a left-to-right layered layout)."""
    memo: dict = {}

    def depth(nid: str) -> int:
        if nid not in memo:
            ups = [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            memo[nid] = 1 + max((depth(str(u)) for u in ups), default=-1)
        return memo[nid]

    return {int(k): depth(k) for k in graph}


def _write_outputs(name: str, ui: dict, png: bytes) -> None:
    from PIL import Image

    for node in ui["nodes"]:
        values = node.get("widgets_values")
        if not isinstance(values, list):
            continue
        if node["type"] == "CheckpointLoaderSimple":
            values[0] = CKPT
    # no fixed workflow id: the frontend gives each opened copy a fresh one, and the train panel tells the
    # copies apart by it (a shared id, or the nil one loadApiJson leaves, would link them all)
    ui.pop("id", None)
    (OUT / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.thumbnail((960, 600))
    img.save(OUT / f"{name}.jpg", quality=82)
    print(f"wrote {OUT / name}.json and .jpg ({len(ui['nodes'])} nodes)")


if __name__ == "__main__":
    sys.exit(main())
