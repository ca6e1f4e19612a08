"""The node panel in a real browser: headless Chromium (Debian's) driven by Playwright against a live ComfyUI.

One server and one page for the module, used in order:
    train to done (the bar moves, the files are shown) -> cancel (and resume from the panel) -> reload mid-run
    (the panel comes back with the same job, later step) -> help page -> jobs sidebar -> no page/pack errors.
A screenshot of the panel goes to test-artifacts/unziplora_panel.png.

    .venv/bin/python -m pytest tests/test_browser.py -x -q -s
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from comfy_server import PACK_FOLDER, REPO, make_base_dir, start_server

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = os.environ.get("UNZIPLORA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-sync", "--disable-component-update"]
ARTIFACTS = REPO / "test-artifacts"
IMAGE_NAME = "unziplora_browser_test.png"
TRAIN_ID = "3"
STEPS = 12
RELOAD_STEPS = 40  # long enough to still be running after a page reload on a slow CPU

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

if sync_playwright is None:
    pytestmark.append(pytest.mark.skip(reason="the Python package playwright is not installed "
                                              "(pip install playwright; never `playwright install`)"))
elif not Path(CHROMIUM).exists():
    pytestmark.append(pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, "
                                              "or set UNZIPLORA_CHROMIUM)"))


def training_prompt(ckpt_name: str, name: str = "browser", steps: int = STEPS) -> dict:
    """API-format graph: CheckpointLoaderSimple -> LoadImage -> UnZipLoRATrain, a config small enough for a CPU."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": IMAGE_NAME}},
        TRAIN_ID: {"class_type": "UnZipLoRATrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "image": ["2", 0],
            "content_prompt": "A sks cat", "style_prompt": "A cat in sketch style", "combined_prompt": "",
            "name": name, "mode": "unziplora", "steps": steps, "rank": 4, "selections": 2, "resolution": 64,
            "seed": 1, "checkpoint_every": 4, "preview_every": 0, "run_mode": "background"}},
    }


def _write_test_image(path: Path) -> None:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:128, 0:128]
    rgb = np.stack([x * 2, y * 2, (x + y) % 256], axis=-1).astype("uint8")  # a smooth gradient with a diagonal
    Image.fromarray(rgb).save(path)


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    """A fresh ComfyUI for this module (own job list, own input image)."""
    base = make_base_dir(tmp_path_factory.mktemp("comfy_browser"), checkpoint=tiny_checkpoint)
    _write_test_image(base / "input" / IMAGE_NAME)
    handle = start_server(base)
    yield handle
    handle.stop()


class PageLog:
    """Uncaught page errors and console errors, split into the pack's and the stock page's."""

    # the help page is looked up as docs/<Node>/<locale>.md first, then docs/<Node>.md (nodeHelpService)
    EXPECTED_404 = re.compile(rf"/extensions/{re.escape(PACK_FOLDER)}/docs/UnZipLoRATrain/[a-z-]+\.md$")

    def __init__(self):
        self.page_errors: list[str] = []
        self.console_errors: list[tuple[str, str]] = []  # (text, url)

    def on_console(self, msg):
        if msg.type == "error":
            self.console_errors.append((msg.text, (msg.location or {}).get("url", "")))

    def pack_errors(self) -> list[tuple[str, str]]:
        out = []
        for text, url in self.console_errors:
            if not (PACK_FOLDER in url or "unziplora" in text.lower() or PACK_FOLDER in text):
                continue
            if text.startswith("Failed to load resource") and self.EXPECTED_404.search(url):
                continue
            out.append((text, url))
        return out


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def session(server, browser, tiny_checkpoint):
    log = PageLog()
    page = browser.new_page(viewport={"width": 1500, "height": 1150})
    page.on("console", log.on_console)
    page.on("pageerror", lambda err: log.page_errors.append(f"{err}\n{getattr(err, 'stack', '')}"))
    t0 = time.monotonic()
    open_app(page, server.url)
    print(f"\npage ready in {time.monotonic() - t0:.1f} s")
    load_workflow(page, training_prompt(tiny_checkpoint.name))
    yield {"page": page, "log": log, "server": server, "ckpt": tiny_checkpoint.name}
    page.close()


# ---------------------------------------------------------------------------------------------------- helpers


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas && window.app.extensionManager",
                           timeout=90_000)
    # our extension is loaded once the node type exists with its panel hook and the sidebar tab is registered
    page.wait_for_function("() => !!window.LiteGraph?.registered_node_types?.UnZipLoRATrain", timeout=60_000)
    close_overlays(page)


def close_overlays(page) -> None:
    """The Templates dialog (first load) and the "Nodes 2.0" banner."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        dialog = page.locator(".p-dialog[aria-labelledby='global-workflow-template-selector']")
        if dialog.count() and dialog.first.is_visible():
            page.keyboard.press("Escape")
            try:
                dialog.first.wait_for(state="hidden", timeout=3000)
            except Exception:
                pass
            continue
        break


def load_workflow(page, prompt: dict) -> None:
    page.evaluate("""(prompt) => {
        const app = window.app;
        app.loadApiJson(prompt, "unziplora_browser_test");
        const g = app.graph;
        const place = (id, x, y) => { const n = g.getNodeById(id); if (n) n.pos = [x, y]; };
        place("1", 40, 80); place("2", 40, 300);
        const train = g.getNodeById(%r);
        train.pos = [440, 40];
        // the seed stays put between runs (the frontend adds "randomize" to widgets named seed)
        const control = train.widgets.find((w) => w.name === "control_after_generate");
        if (control) control.value = "fixed";
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [0, 0];
        g.setDirtyCanvas(true, true);
    }""" % TRAIN_ID, prompt)
    page.wait_for_selector(".uzl-panel", state="visible", timeout=30_000)


def set_widget(page, name: str, value) -> None:
    page.evaluate("""([id, name, value]) => {
        const node = window.app.graph.getNodeById(id);
        const w = node.widgets.find((w) => w.name === name);
        w.value = value;
    }""", [TRAIN_ID, name, value])


def panel_state(page) -> dict:
    return page.evaluate("""() => {
        const p = document.querySelector('.uzl-panel');
        const text = (role) => p.querySelector(`[data-role=${role}]`)?.textContent ?? '';
        const visible = (sel) => { const e = p.querySelector(sel); return !!e && !e.hidden && e.offsetParent !== null; };
        const steps = text('steps').match(/(\\d+)\\s*\\/\\s*(\\d+)/);
        return {
            state: p.dataset.state,
            chip: text('state'),
            job: text('job'),
            jobTitle: p.querySelector('[data-role=job]')?.title ?? '',
            step: steps ? +steps[1] : null,
            total: steps ? +steps[2] : null,
            loss: text('loss'),
            files: [...p.querySelectorAll('[data-role=file]')].map((e) => e.textContent),
            error: text('error'),
            note: text('note'),
            cancelVisible: visible('[data-action=cancel]'),
            resumeVisible: visible('[data-action=resume]'),
        };
    }""")


def server_jobs(server) -> list[dict]:
    return server.client().get_json("/unziplora/jobs")["jobs"]


def wait_panel(page, server, predicate, timeout: float, what: str) -> tuple[dict, list[dict]]:
    """Poll the panel until predicate(state) holds; returns (last state, all states seen)."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        st = panel_state(page)
        if not seen or st != seen[-1]:
            seen.append(st)
        if predicate(st):
            return st, seen
        if st["state"] == "failed" and "failed" not in what:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    jobs = server_jobs(server)
    raise AssertionError(f"panel never showed {what} within {timeout:.0f} s; last panel {seen[-1]}\n"
                         f"server jobs: {[(j['id'], j['state'], j['step'], j['error']) for j in jobs]}\n"
                         f"--- server log:\n{server.log_tail(40)}")


def click_panel(page, action: str) -> None:
    page.locator(f".uzl-panel [data-action={action}]").click()


def screenshot_panel(page, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    box = page.evaluate("""() => {
        const node = window.app.graph.getNodeById(%r);
        const el = document.querySelector('.uzl-panel').getBoundingClientRect();
        const ds = window.app.canvas.ds;
        const rect = window.app.canvas.canvas.getBoundingClientRect();
        const x = rect.left + (node.pos[0] + ds.offset[0]) * ds.scale;
        const y = rect.top + (node.pos[1] + ds.offset[1] - 30) * ds.scale;
        return {x, y, right: Math.max(el.right, x + node.size[0] * ds.scale), bottom: el.bottom};
    }""" % TRAIN_ID)
    # the bottom part of the node: last widgets + the panel
    top = max(box["y"], box["bottom"] - 420)
    page.screenshot(path=str(path), clip={"x": max(0, box["x"] - 12), "y": max(0, top),
                                          "width": box["right"] - box["x"] + 24, "height": box["bottom"] - top + 12})


# ------------------------------------------------------------------------------------------------------ tests


def test_train_runs_to_done(session):
    page, server = session["page"], session["server"]
    st = panel_state(page)
    assert st["state"] == "idle" and st["chip"] == "not trained", st
    t0 = time.monotonic()
    click_panel(page, "train")
    # first run: the checkpoint loads (~20 s on 2 CPU cores), then ~1 s per step
    st, seen = wait_panel(page, server, lambda s: s["state"] == "done", 240, "done")
    print(f"train to done: {time.monotonic() - t0:.1f} s")
    steps = [s["step"] for s in seen if s["step"] is not None]
    distinct = sorted(set(steps))
    assert len([s for s in distinct if 0 < s < STEPS]) >= 2, f"the bar never moved in between: {steps}"
    assert steps == sorted(steps), f"steps went backwards: {steps}"
    assert st["step"] == STEPS and st["total"] == STEPS, st
    assert st["chip"] == "done"
    assert st["files"] == ["browser_content.safetensors", "browser_style.safetensors", "browser.safetensors"], st
    assert not st["cancelVisible"] and not st["resumeVisible"], st
    assert st["loss"].startswith("loss "), st
    job = server_jobs(server)[0]
    assert job["state"] == "done" and job["info"]["node_id"] == TRAIN_ID and st["job"] == job["name"], (job, st)
    for key in ("content", "style", "bundle"):
        assert Path(job["outputs"][key]).is_file(), job["outputs"]
    screenshot_panel(page, ARTIFACTS / "unziplora_panel.png")


def test_cancel_then_resume(session):
    page, server = session["page"], session["server"]
    before = {j["id"] for j in server_jobs(server)}
    click_panel(page, "train")
    st, _ = wait_panel(page, server, lambda s: s["state"] == "running" and (s["step"] or 0) >= 1, 120,
                       "a running job at step >= 1")
    job_name = st["job"]
    assert st["cancelVisible"], st
    click_panel(page, "cancel")
    st, _ = wait_panel(page, server, lambda s: s["state"] == "cancelled", 60, "cancelled")
    assert st["chip"] == "cancelled" and st["job"] == job_name, st
    assert not st["cancelVisible"] and st["resumeVisible"], st
    cancelled = [j for j in server_jobs(server) if j["id"] not in before]
    assert len(cancelled) == 1 and cancelled[0]["state"] == "cancelled" and cancelled[0]["resumable"], cancelled
    stopped_at = cancelled[0]["step"]
    assert 0 < stopped_at < STEPS

    # Resume from the panel: a new job that starts from the checkpoint and finishes
    t0 = time.monotonic()
    click_panel(page, "resume")
    st, seen = wait_panel(page, server, lambda s: s["state"] == "done" and s["job"] != job_name, 150,
                          "the resumed job done")
    print(f"resume to done: {time.monotonic() - t0:.1f} s (cancelled at step {stopped_at})")
    resumed = [j for j in server_jobs(server) if j.get("resumed_from") == cancelled[0]["id"]]
    assert len(resumed) == 1 and resumed[0]["state"] == "done", resumed
    assert st["step"] == STEPS and len(st["files"]) == 3, st
    assert resumed[0]["id"] in st["jobTitle"] and cancelled[0]["id"] in st["jobTitle"], st
    # it continued from the checkpoint: the first step the panel showed for the new job is past 0
    first = next((s["step"] for s in seen if s["job"] == st["job"] and s["step"] is not None), None)
    assert first is not None and first >= 1, seen[:5]


def test_reload_restores_panel(session):
    page, server = session["page"], session["server"]
    set_widget(page, "steps", RELOAD_STEPS)
    click_panel(page, "train")
    st, _ = wait_panel(page, server, lambda s: s["state"] == "running" and s["total"] == RELOAD_STEPS
                       and (s["step"] or 0) >= 2, 120, "the long job running at step >= 2")
    job_name, step_before = st["job"], st["step"]
    t0 = time.monotonic()
    page.reload()
    open_app(page, server.url)
    page.wait_for_selector(".uzl-panel", state="visible", timeout=30_000)
    st, _ = wait_panel(page, server, lambda s: s["job"] == job_name and s["step"] is not None, 30,
                       f"job {job_name} after the reload")
    print(f"reload -> panel restored in {time.monotonic() - t0:.1f} s: step {step_before} -> {st['step']}")
    assert st["step"] >= step_before and st["total"] == RELOAD_STEPS, (step_before, st)
    assert st["state"] in ("running", "done"), st
    # still live after the reload: events keep moving the bar
    if st["state"] == "running":
        later, _ = wait_panel(page, server, lambda s: (s["step"] or 0) > st["step"] or s["state"] == "done", 30,
                              "progress after the reload")
        assert later["job"] == job_name
        click_panel(page, "cancel")  # no need to run the rest
        wait_panel(page, server, lambda s: s["state"] == "cancelled", 60, "cancelled after the reload")
    set_widget(page, "steps", STEPS)


def test_help_page(session):
    page, server = session["page"], session["server"]
    status, body, _ = server.client().request("GET", f"/extensions/{PACK_FOLDER}/docs/UnZipLoRATrain.md")
    assert status == 200 and b"# UnZipLoRA Train" in body
    page.evaluate("""(id) => { const n = window.app.graph.getNodeById(id); window.app.canvas.selectNode(n);
                              window.app.graph.setDirtyCanvas(true, true); }""", TRAIN_ID)
    page.locator("[data-testid=info-button]").first.click(timeout=10_000)
    help_box = page.locator(".markdown-content")
    help_box.first.wait_for(state="visible", timeout=15_000)
    text = help_box.first.inner_text()
    assert "checkpoint_every" in text and "Resume" in text, text[:500]
    page.keyboard.press("Escape")


def test_jobs_sidebar(session):
    page, server = session["page"], session["server"]
    page.locator(".side-tool-bar-container .pi-chart-line, [class*='unziplora-jobs'] .pi-chart-line").first.click()
    page.wait_for_selector(".uzl-joblist .uzl-card", timeout=15_000)
    cards = page.evaluate("""() => [...document.querySelectorAll('.uzl-joblist .uzl-card')].map((c) => ({
        id: c.dataset.job, state: c.dataset.state,
        steps: c.querySelector('[data-role=steps]').textContent,
        files: [...c.querySelectorAll('[data-role=file]')].map((e) => e.textContent)}))""")
    jobs = server_jobs(server)
    assert [c["id"] for c in cards] == [j["id"] for j in jobs], (cards, jobs)
    for card, job in zip(cards, jobs):
        assert card["state"] == job["state"] and card["steps"].startswith(f"{job['step']} / {job['total']}"), card
        if job["state"] == "done":
            assert len(card["files"]) == 3, card
    page.screenshot(path=str(ARTIFACTS / "unziplora_sidebar.png"))


def test_no_page_or_pack_errors(session):
    log = session["log"]
    assert not log.page_errors, log.page_errors
    assert not log.pack_errors(), log.pack_errors()
    print(f"console errors from the stock page (ignored): {len(log.console_errors)}")
