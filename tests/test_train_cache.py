"""What decides whether the stock Run starts a training job (nodes/train_cache.py), without a server: the
fingerprint ComfyUI caches Train by, the request key execute() reuses a job by, and the explicit "train again"."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import torch


def cache_mod(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.train_cache")


class Jobs:
    def __init__(self, jobs):
        self.jobs = jobs

    def list(self):
        return list(self.jobs)


def job(state, key="k", node="3", outputs=None, widget=None):
    return SimpleNamespace(state=state, outputs=outputs or {}, info={"request_key": key, "node_id": node,
                                                                       "widget_key": widget})


PROMPT = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
          "2": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
          "3": {"class_type": "UnZipLoRATrain", "inputs": {"model": ["1", 0], "image": ["2", 0], "steps": 600,
                                                            "seed": 0}},
          "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}


def test_fingerprint_is_stable_until_a_job_from_those_inputs_ends_without_loras(pack):
    c = cache_mod(pack)
    widgets = {"steps": 600, "seed": 0, "model": None, "image": None}  # linked inputs come as None
    key = c.widget_key(widgets)
    assert key == c.widget_key_of(PROMPT, "3")  # what the fingerprint sees == what execute() records
    assert c.widget_key({**widgets, c.FORCE_KEY: "x"}) == key
    assert c.widget_key({**widgets, "seed": 1}) != key
    m = Jobs([job("done", widget=key), job("running", widget=key)])
    first = c.fingerprint(m, widgets)
    assert c.fingerprint(m, widgets) == first  # done / running: ComfyUI may answer from its cache
    m.jobs.append(job("cancelled", widget=key))
    assert c.fingerprint(m, widgets) != first  # ended without LoRAs: Run trains again


def test_request_key_follows_the_graph_upstream_and_the_pixels(pack):
    c = cache_mod(pack)
    img = torch.zeros(1, 8, 8, 3)
    key = c.request_key(PROMPT, "3", img)
    other_output = {**PROMPT, "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}
    assert c.request_key(other_output, "3", img) == key  # nodes downstream / elsewhere do not count
    forced = {**PROMPT, "3": {**PROMPT["3"], "inputs": {**PROMPT["3"]["inputs"], c.FORCE_KEY: "x"}}}
    assert c.request_key(forced, "3", img) == key and c.forced(forced, "3") and not c.forced(PROMPT, "3")
    ckpt = {**PROMPT, "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}}}
    assert c.request_key(ckpt, "3", img) != key
    assert c.request_key(PROMPT, "3", img + 1) != key  # same file name, other pixels


def test_reusable_job_is_done_with_files_or_still_running(pack, tmp_path):
    c = cache_mod(pack)
    files = {"content": str(tmp_path / "c.safetensors"), "style": str(tmp_path / "s.safetensors")}
    done = job("done", outputs=files)
    assert c.reusable_job(Jobs([done]), "k", "3") is None  # its files are gone
    for f in files.values():
        open(f, "wb").close()
    assert c.reusable_job(Jobs([done]), "k", "3") is done
    assert c.reusable_job(Jobs([done]), "other", "3") is None
    assert c.reusable_job(Jobs([done]), "k", "4") is None  # another node's job
    running = job("running")
    assert c.reusable_job(Jobs([running, done]), "k", "3") is running  # newest first
    assert c.reusable_job(Jobs([job("failed"), job("cancelled")]), "k", "3") is None


def test_resume_prompt_breaks_the_cache(pack):
    routes = importlib.import_module(f"{pack.__name__}.nodes.routes")
    c = cache_mod(pack)
    rec = SimpleNamespace(id="j1", resumable=True, continued_by=None, checkpoint="x.pt", state="cancelled",
                          resume_prompt={"3": {"class_type": "UnZipLoRATrain", "inputs": {"seed": 0},
                                               "is_changed": ["old"]}}, info={"node_id": "3"})
    a, b = routes.resume_prompt_for(rec), routes.resume_prompt_for(rec)
    assert a["3"]["inputs"][c.FORCE_KEY] != b["3"]["inputs"][c.FORCE_KEY]
    assert "is_changed" not in a["3"]
