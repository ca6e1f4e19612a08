"""bench/gpu_check.py's plan and graphs (the check itself needs a GPU and runs outside the suite)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_is_full_size_on_the_gpu_and_tiny_on_the_cpu(capsys):
    gc = _gpu_check()
    assert gc.main(["--plan", "--comfyui", "/nowhere"]) == 0
    full = capsys.readouterr().out
    assert "full-size SDXL" in full and "30 steps at 1024 px" in full and "KSampler prompt beside it" in full
    assert gc.main(["--plan", "--comfyui", "/nowhere", "--cpu", "--tiny"]) == 0
    tiny = capsys.readouterr().out
    assert "tiny (cached)" in tiny and "--cpu" in tiny and "at 128 px" in tiny


def test_train_graph_takes_every_node_default_and_overrides_the_check_settings():
    gc = _gpu_check()
    info = {"UnZipLoRATrain": {"input": {
        "required": {"steps": ["INT", {"default": 600}], "mode": [["unziplora", "naive"], {}],
                     "new_input": ["FLOAT", {"default": 0.25}], "model": ["MODEL"]},
        "optional": {"resume_from": ["STRING", {"default": ""}]}}}}
    g = gc.train_graph(info, "x.safetensors", gc.settings(argparse.Namespace(tiny=False, resolution=None, steps=None)))
    inputs = g["3"]["inputs"]
    assert inputs["steps"] == 30 and inputs["resolution"] == 1024 and inputs["rank"] == 64
    assert inputs["new_input"] == 0.25 and inputs["mode"] == "unziplora" and inputs["run_mode"] == "background"
    assert inputs["model"] == ["1", 0] and g["1"]["inputs"]["ckpt_name"] == "x.safetensors"


def test_sample_graph_chains_the_loras_into_model_and_clip():
    g = _gpu_check().sample_graph("x", 1024, 8, 1, loras=["unziplora/a_content.safetensors", "unziplora/a_style.safetensors"])
    assert g["21"]["inputs"]["model"] == ["20", 0] and g["7"]["inputs"]["model"] == ["21", 0]
    assert g["4"]["inputs"]["clip"] == ["21", 1]
