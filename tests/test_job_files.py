"""The job-files route's checks without a server: which recorded paths it will serve, and which preview names
it will join to a folder (hostile names and links refused). The live route is in tests/test_batch_server.py."""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import pytest


@pytest.fixture
def routes(pack, tmp_path, monkeypatch):
    mod = importlib.import_module(f"{pack.__name__}.nodes.batch_routes")
    dirs = SimpleNamespace(loras=str(tmp_path / "loras"), bundles=str(tmp_path / "bundles"),
                           previews=str(tmp_path / "previews"))
    for d in (dirs.loras, dirs.bundles, dirs.previews):
        os.makedirs(d)
    monkeypatch.setattr(mod, "service", lambda: SimpleNamespace(dirs=dirs))
    return mod, dirs, tmp_path


def _job(state="done", **outputs):
    return SimpleNamespace(id="0123456789ab", state=state, outputs=outputs)


def test_serves_only_recorded_files_inside_the_packs_folders(routes):
    mod, dirs, tmp = routes
    content = os.path.join(dirs.loras, "cat_content.safetensors")
    bundle = os.path.join(dirs.bundles, "cat.safetensors")
    secret = tmp / "secret.safetensors"
    for p in (content, bundle, secret):
        open(p, "wb").write(b"x")
    os.symlink(secret, os.path.join(dirs.loras, "link_style.safetensors"))
    job = _job(content=content, style=os.path.join(dirs.loras, "link_style.safetensors"), bundle=bundle)
    assert mod.job_files(job) == {"content": os.path.realpath(content), "bundle": os.path.realpath(bundle)}
    # a record pointing outside (a tampered jobs.json) or through '..' serves nothing
    job = _job(content=str(secret), style=os.path.join(dirs.loras, "..", "secret.safetensors"), bundle=content)
    assert mod.job_files(job) == {}
    # not done: nothing, whatever the record says
    assert mod.job_files(_job(state="running", content=content)) == {}
    # the LoRA folder reached through a linked parent is still judged by the real path
    os.symlink(tmp, os.path.join(dirs.loras, "up"))
    assert mod.job_files(_job(content=os.path.join(dirs.loras, "up", "secret.safetensors"))) == {}


@pytest.mark.parametrize("name", ["step_000004_content.png", "step_12_style.png", "step_000001_combined.png"])
def test_preview_names_accepted(routes, name):
    assert routes[0].PREVIEW_NAME.match(name)


@pytest.mark.parametrize("name", ["../jobs.json", "step_1_content.png/../../x", "step_1_content.png\n", "x.png",
                                  "step_1_other.png", "step_1_content.PNG", ".step_1_content.png", "step__content.png",
                                  "..%2Fstep_1_content.png", "step_1_content.png.exe"])
def test_hostile_preview_names_refused(routes, name):
    assert not routes[0].PREVIEW_NAME.match(name)


def test_previews_listed_from_the_jobs_own_folder_only(routes):
    mod, dirs, tmp = routes
    own = os.path.join(dirs.previews, "0123456789ab")
    os.makedirs(own)
    open(os.path.join(own, "step_000004_content.png"), "wb").write(b"p")
    open(os.path.join(own, "notes.txt"), "w").write("x")
    open(tmp / "outside.png", "wb").write(b"p")
    os.symlink(tmp / "outside.png", os.path.join(own, "step_000008_style.png"))
    assert mod.job_previews(_job()) == ["step_000004_content.png"]
