"""Regenerate example_workflows/*.json (UI format) and their .jpg thumbnails from the API graphs below.

The UI format (nodes, links, widget values in the frontend's order) is produced by the real frontend: each API
graph is loaded into ComfyUI's page in headless Chromium (app.loadApiJson), laid out, screenshotted and
serialised (app.graph.serialize()). Model and bundle names are then set to what a user will have.

    .venv/bin/python scripts/make_workflows.py
    UNZIPLORA_ONLY_TEMPLATES="<title>|<title>" .venv/bin/python scripts/make_workflows.py   # only those, others kept
"""

from __future__ import annotations

import io
import json
import os
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
# what the frontend's "Missing Models" dialog offers to download (node properties.models, zod schema zModelFile)
CKPT_MODEL = {"name": CKPT, "directory": "checkpoints",
              "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                     "sd_xl_base_1.0.safetensors"}
# Score's CLIP Vision model: the ViT-H image encoder ComfyUI users keep under this name (IP-Adapter's, in the
# transformers layout CLIPVisionLoader reads); the frontend offers it for download from properties.models
CLIP_VISION_MODEL = {"name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "directory": "clip_vision",
                     "url": "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors"}
SAMPLE_IMAGE = "unziplora_sample_cat.png"  # shipped in example_workflows/, copied to input/ at load when absent
BUNDLE = "unziplora.safetensors"  # the train node's default name
NEG = "blurry, low quality, deformed"

# file name = the title the template browser shows (it has no other title for a custom node's template)
TRAIN = "Train a content and a style LoRA from one image"
CONTENT = "Content alone - the subject in new scenes and styles"
STYLE = "Style alone - the style on new subjects"
BOTH = "Both - recreate or recombine the image with three prompts"
CROSS = "Cross two images - content of one, style of another"
COMPARE = "Compare naive, B-LoRA and UnZipLoRA on one image"


def _ksampler(model, pos, neg, latent, seed=0):
    return {"class_type": "KSampler", "inputs": {"model": model, "positive": pos, "negative": neg,
                                                 "latent_image": latent, "seed": seed, "steps": 30, "cfg": 6.0,
                                                 "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}}


def _tail(g: dict, nid: int, model, pos, neg, prefix: str) -> list[str]:
    """KSampler -> VAEDecode -> SaveImage as nodes nid+1..nid+3, on the graph's one EmptyLatentImage ("99")."""
    g.setdefault("99", {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}})
    g[str(nid + 1)] = _ksampler(model, pos, neg, ["99", 0])
    g[str(nid + 2)] = {"class_type": "VAEDecode", "inputs": {"samples": [str(nid + 1), 0], "vae": ["1", 2]}}
    g[str(nid + 3)] = {"class_type": "SaveImage", "inputs": {"images": [str(nid + 2), 0], "filename_prefix": prefix}}
    return [str(nid + 1), str(nid + 2), str(nid + 3)]


def _text(clip, text):
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}


def _apply(mode: str, content_from, style_from=None) -> dict:
    inputs = {"model": ["1", 0], "mode": mode, "content_from": content_from, "content_strength": 1.0,
              "style_strength": 1.0}
    if style_from is not None:
        inputs["style_from"] = style_from
    return {"class_type": "UnZipLoRAApply", "inputs": inputs}


def _train(image, name: str, mode: str = "unziplora") -> dict:
    return {"class_type": "UnZipLoRATrain", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "image": image,
        "content_prompt": "A sks cat", "style_prompt": "A cat in sketch style", "combined_prompt": "",
        "name": name, "mode": mode, "steps": 600, "rank": 64, "lr_content": 5e-5,
        "lr_style": 5e-5, "lr_merger": 5e-3, "column_ratio": 0.1, "selections": 3, "orth_lambda": 0.5,
        "resolution": 1024, "seed": 0, "checkpoint_every": 200, "preview_every": 100, "preview_steps": 8,
        "gradient_checkpointing": "auto", "precision": "auto", "run_mode": "background"}}


def _base(g: dict) -> dict:
    g["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}
    return g


# A workflow: the API graph, its sections (group title, node ids, the Note saying what to change) and, for
# nodes shared by every section, a first column of their own.
def train_workflow() -> dict:
    g = _base({"2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE_IMAGE}}, "3": _train(["2", 0], "unziplora")})
    return {"graph": g, "sections": [
        {"title": "Model and image", "nodes": ["1", "2"], "note":
            "Pick your SDXL checkpoint, and the image to unzip in Load Image (a sample sketch is installed as "
            f"{SAMPLE_IMAGE})."},
        {"title": "Train (runs in the background)", "nodes": ["3"], "note":
            "1. Name the subject with a rare word in content_prompt ('A sks cat') and describe the style on a plain "
            "subject in style_prompt ('A cat in sketch style').\n2. Set name: the files become "
            "models/loras/unziplora/<name>_content / <name>_style.\n3. Press Train on the panel (or Run). The "
            "queue stays free; previews, loss, Cancel and Resume are on the panel, and 'Use it' adds a graph "
            "that samples with the result.\nThe defaults are the paper's (600 steps at 1024 px); fewer steps or "
            "a lower resolution train faster."},
    ]}


def content_workflow() -> dict:
    g = _base({
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": BUNDLE}},
        "3": _text(["1", 1], NEG),
        "10": _apply("content", ["2", 0]),
        # the trained content prompt ("A sks cat") + the new scene, instead of retyping the trigger
        "11": {"class_type": "StringConcatenate", "inputs": {"string_a": ["2", 2],
                                                             "string_b": "on the beach, watercolor painting",
                                                             "delimiter": " "}},
        "12": _text(["1", 1], ["11", 0]),
    })
    tail = _tail(g, 12, ["10", 0], ["12", 0], ["3", 0], "unziplora_content")
    return {"graph": g, "sections": [
        {"title": "Model and trained pair", "nodes": ["1", "2", "3"], "note":
            f"Pick the checkpoint you trained on and your run in UnZipLoRA Loader (the Train node's name, e.g. "
            f"{BUNDLE}). The negative prompt is shared."},
        {"title": "Content alone: the subject somewhere new", "nodes": ["10", "11", "12", *tail], "note":
            "The content LoRA alone is an ordinary LoRA (the same as LoraLoader on <name>_content). Change "
            "string_b of Concatenate: it is appended to the trained content prompt ('A sks cat' + 'on the beach, "
            "watercolor painting')."},
    ]}


def style_workflow() -> dict:
    g = _base({
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": BUNDLE}},
        "3": _text(["1", 1], NEG),
        "20": _apply("style", ["2", 0]),
        # the trained style prompt ("A cat in sketch style") with its subject swapped
        "21": {"class_type": "StringReplace", "inputs": {"string": ["2", 3], "find": "cat",
                                                         "replace": "dog on a bicycle"}},
        "22": _text(["1", 1], ["21", 0]),
    })
    tail = _tail(g, 22, ["20", 0], ["22", 0], ["3", 0], "unziplora_style")
    return {"graph": g, "sections": [
        {"title": "Model and trained pair", "nodes": ["1", "2", "3"], "note":
            f"Pick the checkpoint you trained on and your run in UnZipLoRA Loader (e.g. {BUNDLE})."},
        {"title": "Style alone: a new subject in the style", "nodes": ["20", "21", "22", *tail], "note":
            "The style LoRA alone is an ordinary LoRA (the same as LoraLoader on <name>_style). Replace swaps the "
            "subject of the trained style prompt: set find to its subject word ('cat') and replace to yours "
            "('dog on a bicycle' gives 'A dog on a bicycle in sketch style')."},
    ]}


def both_workflow() -> dict:
    g = _base({
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": BUNDLE}},
        "30": _apply("both", ["2", 0]),
        # recreate: the three trained prompts, straight from the loader
        "31": {"class_type": "UnZipLoRAPrompts", "inputs": {
            "clip": ["1", 1], "prompt": ["2", 1], "content_prompt": ["2", 2], "style_prompt": ["2", 3],
            "negative_prompt": NEG}},
        # recombine: one change ("cat" -> "cat on a skateboard") applied to all three prompts
        "40": {"class_type": "PrimitiveString", "inputs": {"value": "cat on a skateboard"}},
        "41": {"class_type": "StringReplace", "inputs": {"string": ["2", 1], "find": "cat", "replace": ["40", 0]}},
        "42": {"class_type": "StringReplace", "inputs": {"string": ["2", 2], "find": "cat", "replace": ["40", 0]}},
        "43": {"class_type": "StringReplace", "inputs": {"string": ["2", 3], "find": "cat", "replace": ["40", 0]}},
        "44": {"class_type": "UnZipLoRAPrompts", "inputs": {
            "clip": ["1", 1], "prompt": ["41", 0], "content_prompt": ["42", 0], "style_prompt": ["43", 0],
            "negative_prompt": NEG}},
    })
    recreate = _tail(g, 32, ["30", 0], ["31", 0], ["31", 1], "unziplora_recreate")
    recombine = _tail(g, 45, ["30", 0], ["44", 0], ["44", 1], "unziplora_recombine")
    return {"graph": g, "sections": [
        {"title": "Model and trained pair", "nodes": ["1", "2", "30"], "note":
            f"Pick the checkpoint you trained on and your run in UnZipLoRA Loader (e.g. {BUNDLE}). Apply in mode "
            "'both' loads both LoRAs with their mergers; each reads its own prompt."},
        {"title": "Recreate: the trained prompts", "nodes": ["31", *recreate], "note":
            "The combined, content and style prompts come from the run itself: this recreates the image."},
        {"title": "Recombine: one change in all three prompts", "nodes": ["40", "41", "42", "43", "44", *recombine],
         "note": "Type the new subject once in String ('cat on a skateboard'): Replace puts it into the combined, "
                 "content and style prompts ('A sks cat on a skateboard in sketch style' / 'A sks cat on a "
                 "skateboard' / 'A cat on a skateboard in sketch style'). find is the subject word of your prompts."},
    ]}


def cross_workflow() -> dict:
    g = _base({
        "2": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": BUNDLE}},
        "3": {"class_type": "UnZipLoRALoader", "inputs": {"bundle": "watercolor.safetensors"}},
        "4": _apply("both", ["2", 0], ["3", 0]),
        # content prompt of A, style prompt of B; the combined prompt is built from the two
        "5": {"class_type": "UnZipLoRAPrompts", "inputs": {
            "clip": ["1", 1], "prompt": "", "content_prompt": ["2", 2], "style_prompt": ["3", 3],
            "negative_prompt": NEG, "content_from": ["2", 0], "style_from": ["3", 0]}},
    })
    tail = _tail(g, 6, ["4", 0], ["5", 0], ["5", 1], "unziplora_cross")
    return {"graph": g, "sections": [
        {"title": "Two trained pairs", "nodes": ["1", "2", "3"], "note":
            "Top loader: the run whose content (subject) you want. Bottom loader: the run whose style you want. "
            "Any two LoRA files work too: replace a loader by 'UnZipLoRA Load LoRA Pair' or 'Load B-LoRA'."},
        {"title": "Content of A x style of B", "nodes": ["4", "5", *tail], "note":
            "Apply takes the content LoRA of content_from and the style LoRA of style_from. Prompts reads A's "
            "content prompt and B's style prompt; an empty combined prompt is built from them ('A sks cat' + "
            "'A house in watercolor style' -> 'A sks cat in watercolor style'). Type one to change the scene."},
    ]}


def compare_workflow() -> dict:
    g = _base({"2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE_IMAGE}}})
    sections = [{"title": "Model and image", "nodes": ["1", "2"], "note":
                 "One image, three methods, the same prompts and seed: their previews appear side by side on the "
                 "three panels. Change the prompts on each Train node alike."}]
    for i, (mode, what) in enumerate((("naive", "two LoRAs on one prompt (the paper's baseline)"),
                                      ("blora", "B-LoRA: one LoRA in two blocks, split by block"),
                                      ("unziplora", "prompt + column + block separation (the paper)"))):
        nid = str(10 + i)
        g[nid] = _train(["2", 0], f"compare_{mode}", mode)
        g[nid]["inputs"].update(steps=300, checkpoint_every=0, preview_every=50)
        sections.append({"title": f"mode {mode}", "nodes": [nid], "note": f"{mode}: {what}. Run trains all three "
                         "one after another (the queue stays free); each panel's 'Use it' samples with its files."})
    return {"graph": g, "sections": sections, "row": True}


SEEDS_TRAIN = "Seeds - train three runs to pick the best one"
SEEDS_SCORE = "Seeds - score the three runs and pick the best"
INSPECT_SPEC = REPO / "scripts" / "seeds_workflows.json"  # the seed-fragility graphs (from the inspect work)


def _seeds_graphs() -> dict:
    """The seed-fragility pair of graphs (described by the inspect work: train seeds 0-2, then score them)."""
    spec = json.loads(INSPECT_SPEC.read_text()) if INSPECT_SPEC.is_file() else None
    if spec is None:
        return {}
    graphs = {}
    for key, g in spec["graphs"].items():
        g = json.loads(json.dumps(g))
        for node in g.values():
            node["inputs"].pop("resume_from", None)
            if node["class_type"] == "LoadImage":
                node["inputs"]["image"] = SAMPLE_IMAGE
        graphs[key] = g
    return graphs


def seeds_train_workflow() -> dict:
    g = _seeds_graphs()["unziplora_seeds_train"]
    trains = [k for k, n in g.items() if n["class_type"] == "UnZipLoRATrain"]
    sections = [{"title": "Model and image", "nodes": ["1", "2"], "note":
                 "The method is sensitive to the seed: train the same image three times (seeds 0, 1, 2), then open "
                 f"'{SEEDS_SCORE}' to score the runs and keep the best."}]
    for k in trains:
        seed = g[k]["inputs"]["seed"]
        sections.append({"title": f"seed {seed}", "nodes": [k], "note":
                         f"Run {g[k]['inputs']['name']}: the same prompts with seed {seed}. Run queues all three; "
                         "they train one after another and the queue stays free."})
    return {"graph": g, "sections": sections, "row": True}


def seeds_score_workflow() -> dict:
    g = _seeds_graphs()["unziplora_seeds_compare"]
    runs = [r for r in "123" if f"{r}00" in g]
    shared = ["1", "2", "3", "4", "5", "6", "7"]
    sections = [{"title": "Model, reference image, prompts", "nodes": shared, "note":
                 "The reference is the training image. Score needs a CLIP Vision model in models/clip_vision (any "
                 "CLIP ViT, e.g. CLIP-ViT-H-14). Both samples of every run use the same prompts and sampling seed."}]
    for r in runs:
        nodes = [k for k in g if len(k) == 3 and k[0] == r]
        sections.append({"title": f"run {g[r + '00']['inputs']['bundle'].rsplit('.', 1)[0]}", "nodes": nodes,
                         "note": "One run: a style-only and a content-only sample, and what each LoRA took "
                                 "(Inspect). Pick the run in the loader if you named yours differently."})
    sections.append({"title": "Score", "nodes": [k for k in g if k.startswith("9")], "note":
                     "The samples are batched in run order; Score compares them with the reference and names the "
                     "best run (best_index)."})
    return {"graph": g, "sections": sections}


CATALOGUE = "Train a pair for every image in a folder"
CATALOGUE_FOLDER = "unziplora_catalogue"  # input/<this>: main() makes it so the folder list holds it
CATALOGUE_ITEMS = ("catalogue_item1", "catalogue_item2")  # two of the batch's pairs, ranked side by side


def catalogue_workflow() -> dict:
    """Train Folder (one background job per image), then Score ranking the batch's pairs."""
    train = _train(None, "catalogue")
    train["class_type"] = "UnZipLoRATrainFolder"
    inputs = train["inputs"]
    for key in ("image", "run_mode"):
        inputs.pop(key)
    inputs["folder"] = CATALOGUE_FOLDER
    g = _base({"3": train, "2": {"class_type": "LoadImage", "inputs": {"image": SAMPLE_IMAGE}},
               "4": {"class_type": "CLIPVisionLoader",
                     "inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}},
               "5": _text(["1", 1], NEG), "6": _text(["1", 1], "A dog in sketch style"),
               "7": _text(["1", 1], "A sks cat on the beach"),
               "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}}})
    rows = []
    for r, item in enumerate(CATALOGUE_ITEMS, start=1):
        loader = f"{r}00"
        g[loader] = {"class_type": "UnZipLoRALoader", "inputs": {"bundle": f"{item}.safetensors"}}
        for side, off, pos in (("style", 10, "6"), ("content", 20, "7")):
            g[f"{r}{off}"] = _apply(side, [loader, 0])
            g[f"{r}{off + 1}"] = _ksampler([f"{r}{off}", 0], [pos, 0], ["5", 0], ["8", 0], seed=42)
            g[f"{r}{off + 2}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{r}{off + 1}", 0], "vae": ["1", 2]}}
        rows.append([k for k in g if len(k) == 3 and k[0] == str(r)])
    g["90"] = {"class_type": "ImageBatch", "inputs": {"image1": ["112", 0], "image2": ["212", 0]}}
    g["91"] = {"class_type": "ImageBatch", "inputs": {"image1": ["122", 0], "image2": ["222", 0]}}
    g["95"] = {"class_type": "UnZipLoRAScore", "inputs": {
        "clip_vision": ["4", 0], "reference": ["2", 0], "style_images": ["90", 0], "content_images": ["91", 0],
        "labels": ", ".join(CATALOGUE_ITEMS), "crop": "center"}}
    sections = [
        {"title": "Model", "nodes": ["1"], "note": "Pick your SDXL checkpoint."},
        {"title": "Train every image of a folder (background, one job each)", "nodes": ["3"], "note":
            f"1. Put the images in a folder inside ComfyUI's input directory ({CATALOGUE_FOLDER} here) and pick "
            "it in folder (press R after adding a folder).\n2. Optional: a caption <stem>.txt beside an image "
            "gives it its own subject ('a red sneaker'), or 'content: ...' / 'style: ...' lines.\n3. Run. Each "
            "image becomes a job named <name>_<stem>; they train one after another. The panel and the "
            "UnZipLoRA sidebar tab show the queue, ETAs, Cancel all and Resume all."},
        {"title": "Reference and probes", "nodes": ["2", "4", "5", "6", "7", "8"], "note":
            "After the batch: Load Image = the image whose look you want to rank against (for a portfolio, any "
            "of its images). Score needs a CLIP Vision model in models/clip_vision."},
    ]
    for r, nodes in enumerate(rows, start=1):
        sections.append({"title": f"pair {CATALOGUE_ITEMS[r - 1]}", "nodes": nodes, "note":
                         "One pair of the batch: pick catalogue_<stem> in the loader. A style-only sample (a new "
                         "subject) and a content-only sample."})
    sections.append({"title": "Score: rank the pairs", "nodes": ["90", "91", "95"], "note":
                     "Rows in pair order; best_index names the pair whose samples are closest to the reference. "
                     "Copy a pair group and add it to both Image Batch chains to rank more."})
    return {"graph": g, "sections": sections}


WORKFLOWS = {TRAIN: train_workflow, CONTENT: content_workflow, STYLE: style_workflow, BOTH: both_workflow,
             CROSS: cross_workflow, COMPARE: compare_workflow}
# rendered only where the nodes they use exist (UnZipLoRA Score / Inspect come with the "inspect" work)
OPTIONAL_WORKFLOWS = {SEEDS_TRAIN: (seeds_train_workflow, ()),
                      SEEDS_SCORE: (seeds_score_workflow, ("UnZipLoRAScore", "UnZipLoRAInspect")),
                      CATALOGUE: (catalogue_workflow, ("UnZipLoRATrainFolder", "UnZipLoRAScore"))}


def main() -> int:
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM, CHROMIUM_ARGS, close_templates_dialog, open_app

    ckpt_path = ensure_tiny_checkpoint()
    base = make_base_dir(Path(tempfile.mkdtemp(prefix="unziplora-workflows-")), checkpoint=ckpt_path)
    (base / "models" / "checkpoints" / CKPT).symlink_to(ckpt_path)  # the shipped name, so the combos hold it
    OUT.mkdir(exist_ok=True)
    write_sample_image(OUT / SAMPLE_IMAGE)
    (base / "input" / SAMPLE_IMAGE).write_bytes((OUT / SAMPLE_IMAGE).read_bytes())
    bundles = ("unziplora", "watercolor", "cat_seed0", "cat_seed1", "cat_seed2", *CATALOGUE_ITEMS)
    (base / "input" / CATALOGUE_FOLDER).mkdir(parents=True, exist_ok=True)
    for name in bundles:  # empty placeholders: the loader lists names, nothing is loaded
        (base / "models" / "unziplora").mkdir(parents=True, exist_ok=True)
        (base / "models" / "unziplora" / f"{name}.safetensors").write_bytes(b"")
    (base / "models" / "clip_vision").mkdir(parents=True, exist_ok=True)
    (base / "models" / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors").write_bytes(b"")
    only = [t for t in os.environ.get("UNZIPLORA_ONLY_TEMPLATES", "").split("|") if t]  # titles, '|'-separated
    server = start_server(base)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            def fresh_page(first_visit):
                page = browser.new_page(viewport={"width": 2600, "height": 1700})
                open_app(page, server.url)
                try:  # the server remembers the first visit: later pages may open no Templates dialog
                    close_templates_dialog(page, timeout=60 if first_visit else 5)
                except Exception:
                    if first_visit:
                        raise
                page.evaluate("() => window.app.ui?.settings?.setSettingValue?.('Comfy.Minimap.Visible', false)")
                banner = page.locator("button[aria-label='Close']").first  # the 'Nodes 2.0' announcement
                if banner.count():
                    banner.click()
                return page

            page = fresh_page(True)
            known = set(server.client().object_info())
            todo = dict(WORKFLOWS)
            rendered = []
            for name, (make, needs) in OPTIONAL_WORKFLOWS.items():
                missing = [t for t in needs if t not in known]
                if missing or not INSPECT_SPEC.is_file():
                    print(f"skipped {name!r}: needs {missing or INSPECT_SPEC}")
                else:
                    todo[name] = make
            for name, make in todo.items():
                if only and name not in only:
                    continue
                # a page per workflow: Nodes 2.0 on large graphs has crashed the renderer (1.32.9)
                page.close()
                page = fresh_page(False)
                rendered.append((name, *render(page, name, make())))
            browser.close()
        # replaced only once every one rendered (a failed run leaves the shipped ones as they were); names change
        # with titles: no stale template stays listed (UNZIPLORA_ONLY_TEMPLATES: only those are rewritten)
        for old in (list(OUT.glob("*.json")) + list(OUT.glob("*.jpg"))) if not only else []:
            old.unlink()
        for name, ui, png in rendered:
            _write_outputs(name, ui, png)
    finally:
        server.stop()
    return 0


def write_sample_image(path: Path) -> None:
    """The sketch every template's Load Image names (drawn, ours to ship; 512 px keeps it small)."""
    img = make_sketch(512, 512)
    img.save(path, optimize=True)
    assert path.stat().st_size < 200_000, f"{path} is {path.stat().st_size} bytes"


def render(page, name: str, wf: dict) -> tuple[dict, bytes]:
    """Load the API graph into the page, add a Note per section, lay the sections out as groups, serialise."""
    placed = {n for sec in wf["sections"] for n in sec["nodes"]}
    wf["sections"][0]["nodes"] += [n for n in wf["graph"] if n not in placed]  # e.g. the shared latent
    drawn = vue_sizes(page, wf["graph"], name)
    page.evaluate("""([graph, name, model, clipVision, drawn]) => {
        const app = window.app;
        app.nodeOutputs = {};  // no image previews carried over from the previous graph's node ids
        app.loadApiJson(graph, name);
        for (const n of app.graph.nodes) {
            const c = n.widgets?.find((w) => w.name === "control_after_generate");
            if (c) c.value = "fixed";
            // room for the image a run shows, so nothing overlaps afterwards
            if (n.type === "SaveImage") n.size = [420, 470];
            // Nodes 2.0 sizes a node by its content (often taller): lay out with the larger of the two sizes,
            // which both renderers then draw at least
            const v = drawn[String(n.id)];
            if (v) n.size = [Math.max(n.size[0], Math.ceil(v[0])), Math.max(n.size[1], Math.ceil(v[1]))];
            if (n.type === "CheckpointLoaderSimple") n.properties.models = [model];
            if (n.type === "CLIPVisionLoader") n.properties.models = [clipVision];
            // which trained run to load is the user's choice (or "Use it"'s): a template naming a file nobody
            // can download makes the frontend report a missing model it cannot resolve (1.58) or fail late (1.32)
            const chosen = { UnZipLoRALoader: ["bundle"], UnZipLoRALoadFiles: ["content_lora", "style_lora"],
                             UnZipLoRALoadBLoRA: ["lora"] }[n.type] ?? [];
            for (const w of n.widgets ?? []) if (chosen.includes(w.name)) w.value = "";
        }
    }""", [wf["graph"], name, CKPT_MODEL, CLIP_VISION_MODEL, drawn])
    page.wait_for_timeout(600)  # let DOM widgets size their nodes before laying out
    out = page.evaluate("""([sections, row, depth]) => {
        const app = window.app, g = app.graph, LG = window.LiteGraph;
        const TITLE = LG.NODE_TITLE_HEIGHT ?? 30, PAD = 24, HEAD = 50, GAP = 36, SECTION_GAP = 60;
        const colors = ["#3f789e", "#8a8a3e", "#5f8f4f", "#7a4f8f", "#8f5f4f", "#4f8f8a"];
        const place = (sec, x0, y0, vertical) => {
            const note = LG.createNode("Note");
            note.widgets[0].value = sec.note;
            note.size = [360, Math.max(120, 40 + 17 * Math.ceil(sec.note.length / 48))];
            g.add(note);
            const nodes = sec.nodes.map((id) => g.getNodeById(Number(id)));
            const cols = {};
            for (const n of nodes) (cols[vertical ? 0 : depth[n.id]] ??= []).push(n);
            const columns = [[note], ...Object.keys(cols).map(Number).sort((a, b) => a - b).map((k) => cols[k])];
            if (vertical) columns.splice(0, 2, [note, ...columns[1]]);
            let x = x0 + PAD, bottom = y0;
            for (const col of columns) {
                let y = y0 + HEAD + TITLE, w = 0;
                for (const n of col) {
                    n.pos = [x, y];
                    y += n.size[1] + TITLE + GAP;
                    w = Math.max(w, n.size[0]);
                }
                bottom = Math.max(bottom, y - GAP - TITLE);
                x += w + GAP + 20;
            }
            const right = x - GAP - 20 + PAD, bot = bottom + PAD;
            const group = new LG.LGraphGroup(sec.title);
            group.configure({ id: -1, title: sec.title, bounding: [x0, y0, right - x0, bot - y0],
                              color: colors[sec.index % colors.length], font_size: 24 });
            g.add(group);
            return [right, bot];
        };
        // the shared section is a column on the left; the others stack to its right (or sit in a row)
        sections.forEach((s, i) => (s.index = i));
        const [left] = place(sections[0], 40, 40, true);
        let x = left + SECTION_GAP, y = 40;
        for (const sec of sections.slice(1)) {
            const [r, b] = place(sec, x, y, false);
            if (row) x = r + SECTION_GAP; else y = b + SECTION_GAP;
        }
        const b = [...g.nodes.map((n) => [n.pos[0], n.pos[1] - TITLE, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]),
                   ...g.groups.map((gr) => [gr.pos[0], gr.pos[1], gr.pos[0] + gr.size[0], gr.pos[1] + gr.size[1]])]
            .reduce((a, r) => [Math.min(a[0], r[0]), Math.min(a[1], r[1]), Math.max(a[2], r[2]), Math.max(a[3], r[3])],
                    [1e9, 1e9, -1e9, -1e9]);
        // fit the graph into the middle of the canvas, clear of the side bar and the floating menus
        const W = app.canvas.canvas.clientWidth, H = app.canvas.canvas.clientHeight;
        const s = Math.min((W - 500) / (b[2] - b[0]), (H - 400) / (b[3] - b[1]), 1.0);
        app.canvas.ds.scale = s;
        app.canvas.ds.offset = [250 / s - b[0], 200 / s - b[1]];
        g.setDirtyCanvas(true, true);
        const r = app.canvas.canvas.getBoundingClientRect();
        // JSON round trip: Playwright turns undefined into None, which would be written as null (the schema
        // refuses null for floatingLinks, definitions, extra.reroutes, slot_index, ...)
        return {ui: JSON.parse(JSON.stringify(g.serialize())),
                clip: {x: r.left + 250 - 20, y: r.top + 200 - 20,
                       width: (b[2] - b[0]) * s + 40, height: (b[3] - b[1]) * s + 40}};
    }""", [wf["sections"], bool(wf.get("row")), _depths(wf["graph"])])
    page.mouse.move(5, 5)
    page.wait_for_timeout(800)
    return out["ui"], page.screenshot(clip=out["clip"])


VUE_SETTING = "Comfy.VueNodes.Enabled"


def vue_sizes(page, graph: dict, name: str) -> dict:
    """{node id: [width, height]} of each node as Nodes 2.0 draws it (graph units, body without the title)."""
    page.evaluate("([id]) => window.app.extensionManager.setting.set(id, true)", [VUE_SETTING])
    try:
        page.evaluate("([graph, name]) => { window.app.nodeOutputs = {}; window.app.loadApiJson(graph, name); }",
                      [graph, name])
        page.wait_for_selector("[data-node-id]", timeout=20_000)
        page.wait_for_timeout(1500)  # the node components size themselves
        return page.evaluate("""() => { const app = window.app, TITLE = window.LiteGraph.NODE_TITLE_HEIGHT ?? 30;
            const s = app.canvas.ds.scale || 1, out = {};
            for (const n of app.graph.nodes) {
                const el = document.querySelector(`.lg-node[data-node-id="${n.id}"]`);
                if (!el) continue;
                const r = el.getBoundingClientRect();
                out[String(n.id)] = [r.width / s, r.height / s - TITLE];
            }
            return out; }""")
    finally:
        page.evaluate("([id]) => window.app.extensionManager.setting.set(id, false)", [VUE_SETTING])
        page.wait_for_timeout(300)


def _depths(graph: dict) -> dict:
    """Column of each node: the longest chain of links leading into it (a left-to-right layered layout)."""
    memo: dict = {}

    def depth(nid: str) -> int:
        if nid not in memo:
            ups = [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            memo[nid] = 1 + max((depth(str(u)) for u in ups), default=-1)
        return memo[nid]

    return {int(k): depth(k) for k in graph}


NULLABLE = {"link", "links", "config", "extra"}  # the only keys the frontend's workflow schema lets be null


def find_nulls(value, path: str = "") -> list[str]:
    """Paths of null values the workflow schema would refuse."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None and k not in NULLABLE:
                out.append(f"{path}.{k}")
            else:
                out += find_nulls(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += find_nulls(v, f"{path}[{i}]")
    return out


def _write_outputs(name: str, ui: dict, png: bytes) -> None:
    from PIL import Image

    # no fixed workflow id: the frontend gives each opened copy a fresh one, and the train panel tells the
    # copies apart by it (a shared id, or the nil one loadApiJson leaves, would link them all)
    ui.pop("id", None)
    nulls = find_nulls(ui)
    assert not nulls, f"{name}: null where the workflow schema wants a value: {nulls[:10]}"
    (OUT / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.thumbnail((960, 600))
    img.save(OUT / f"{name}.jpg", quality=82)
    print(f"wrote {OUT / name}.json and .jpg ({len(ui['nodes'])} nodes)")


if __name__ == "__main__":
    sys.exit(main())
