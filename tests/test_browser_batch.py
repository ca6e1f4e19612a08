"""A Train Folder batch in a real browser: queued from the page, it shows in the UnZipLoRA sidebar tab (queue
positions, ETA) and on the node's panel, and Cancel all stops every image. Screenshots: test-artifacts/
unziplora_batch_sidebar.png, unziplora_batch_cancelled.png."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from comfy_server import make_base_dir, start_server
from test_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, SIDEBAR_TAB_BUTTON, PageLog, load_workflow, open_app,
                          sync_playwright, watched_page)
from test_browser import pytestmark as _browser_marks

pytestmark = list(_browser_marks)
FOLDER = "catalogue"


def folder_prompt(ckpt: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
            "3": {"class_type": "UnZipLoRATrainFolder", "inputs": {
                "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "folder": FOLDER, "content_prompt": "A sks cat",
                "style_prompt": "A cat in sketch style", "combined_prompt": "", "name": "shelf", "mode": "unziplora",
                "steps": 200, "rank": 4, "selections": 2, "resolution": 64, "seed": 1, "checkpoint_every": 50,
                "preview_every": 0}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    base = make_base_dir(tmp_path_factory.mktemp("comfy_browser_batch"), checkpoint=tiny_checkpoint)
    (base / "input" / FOLDER).mkdir(parents=True)
    for i, stem in enumerate(("lamp", "chair", "rug")):
        Image.new("RGB", (96, 96), (60 * i, 140, 90)).save(base / "input" / FOLDER / f"{stem}.png")
    handle = start_server(base)
    yield handle
    handle.stop()


def batches(server) -> list[dict]:
    return server.client().get_json("/unziplora/batches")["batches"]


def test_folder_batch_in_sidebar_with_queue_eta_and_cancel_all(server, tiny_checkpoint):
    ARTIFACTS.mkdir(exist_ok=True)
    log = PageLog()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        page = watched_page(context, log)
        open_app(page, server.url, first_visit=True)
        page.wait_for_function("() => !!window.LiteGraph?.registered_node_types?.UnZipLoRATrainFolder")
        load_workflow(page, folder_prompt(tiny_checkpoint.name), name="unziplora_batch_test",
                      panel=".uzl-batch-panel")
        page.evaluate("() => window.app.queuePrompt(0)")
        page.locator(SIDEBAR_TAB_BUTTON).first.click()
        card = page.locator(".uzl-batches .uzl-batch")
        card.first.wait_for(timeout=900_000)
        # the queue: positions for the waiting images, and a whole-batch ETA once the first steps are measured
        page.wait_for_function("""() => {
            const c = document.querySelector('.uzl-batches .uzl-batch');
            const meta = c?.querySelector('[data-role=batch-meta]')?.textContent ?? '';
            const items = [...(c?.querySelectorAll('[data-role=item-meta]') ?? [])].map((e) => e.textContent);
            return /batch ends in/.test(meta) && items.some((t) => /#1 in queue/.test(t))
                && items.some((t) => /#2 in queue/.test(t));
        }""", timeout=600_000)
        shown = page.evaluate("""() => {
            const c = document.querySelector('.uzl-batches .uzl-batch');
            return {batch: c.dataset.batch, meta: c.querySelector('[data-role=batch-meta]').textContent,
                    items: [...c.querySelectorAll('.uzl-batch-item')].map((e) => ({job: e.dataset.job,
                        state: e.dataset.state, file: e.querySelector('.uzl-batch-file').textContent,
                        meta: e.querySelector('[data-role=item-meta]').textContent}))};
        }""")
        [server_batch] = batches(server)
        assert shown["batch"] == server_batch["id"]
        assert [i["file"] for i in shown["items"]] == ["chair.png", "lamp.png", "rug.png"], shown
        assert [i["state"] for i in shown["items"]].count("running") == 1, shown
        assert "ends in" in " ".join(i["meta"] for i in shown["items"]), shown
        # the node that started the batch shows it on its panel
        panel = page.locator("[data-role=batch-panel] .uzl-batch")
        panel.first.wait_for(timeout=30_000)
        assert panel.first.get_attribute("data-batch") == server_batch["id"]
        page.screenshot(path=str(ARTIFACTS / "unziplora_batch_sidebar.png"))

        page.locator(".uzl-batches [data-action=cancel-all]").first.click()
        end = time.time() + 120
        while time.time() < end:
            [b] = batches(server)
            if all(it["job"]["state"] == "cancelled" for it in b["items"]):
                break
            time.sleep(0.3)
        assert all(it["job"]["state"] == "cancelled" for it in b["items"]), b["counts"]
        page.wait_for_function("""() => {
            const c = document.querySelector('.uzl-batches .uzl-batch');
            const states = [...(c?.querySelectorAll('.uzl-batch-item') ?? [])].map((e) => e.dataset.state);
            return states.length === 3 && states.every((s) => s === 'cancelled')
                && !!c.querySelector('[data-action=resume-all]');
        }""", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "unziplora_batch_cancelled.png"))
        context.close()
        browser.close()
    assert not log.page_errors, log.page_errors
    assert not log.unexpected(), log.unexpected()
