"""Test set-up: ComfyUI on sys.path, the pack imported as a package (as ComfyUI imports it), shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(REPO / "scripts"))  # appended: the repo's folders must not shadow ComfyUI's modules
import dev_env  # noqa: E402 -- ComfyUI on sys.path (CPU without CUDA), the pack imported as unziplora_pack

PACK_NAME = dev_env.PACK_NAME
dev_env.setup()


@pytest.fixture(scope="session")
def pack():
    return sys.modules[PACK_NAME]


@pytest.fixture
def tiny_sdxl():
    """A fresh tiny SDXL-shaped ModelPatcher (fp32, CPU, seeded weights)."""
    from tiny_models import build_tiny_sdxl

    return build_tiny_sdxl(seed=0)


# --- live ComfyUI server fixtures (the helpers: scripts/comfy_server.py, which scripts use without pytest) ---
from comfy_server import ComfyClient, ensure_tiny_checkpoint, make_base_dir, start_server  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """The tiny random-weight SDXL checkpoint (generated on first use, ~30 s; cached afterwards)."""
    return ensure_tiny_checkpoint()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, tiny_checkpoint):
    """One ComfyUI server for the session, with this pack and the tiny checkpoint."""
    base = make_base_dir(tmp_path_factory.mktemp("comfy_base"), checkpoint=tiny_checkpoint)
    handle = start_server(base)
    yield handle
    handle.stop()


@pytest.fixture
def comfy_client(comfy_server) -> ComfyClient:
    return comfy_server.client()


def pytest_report_header(config):
    from comfy_server import host_description

    return f"host: {host_description()}"


# Test files that exercise no ComfyUI code (no comfy import, no tiny model, no server): the same on every host, so
# scripts/test.sh runs them on the first host only (`-m "not host_independent"` on the others). A file that starts
# to use ComfyUI must leave this list.
HOST_INDEPENDENT = {
    "test_adamw_bf16.py", "test_bad_inputs.py", "test_columns.py", "test_cpu_threads.py", "test_farm_logic.py",
    "test_gpu_check.py", "test_job_records.py", "test_jobs.py", "test_main_without_pytest.py", "test_retention.py",
    "test_schedule.py",
    "test_separation_stats.py", "test_step_ops.py",
}


# Expensive tests of the pack's own logic whose ComfyUI surfaces are exercised on every host by cheaper tests: run
# on the first host only, to keep the two-host CI run within its time. Each entry says why that is enough. A test
# can also carry @pytest.mark.first_host_only itself (with the same kind of reason beside it).
FIRST_HOST_ONLY = {
    # an HTTP client of ComfyUI (two servers and a Ray instance); the routes it calls are the pack's own, tested on
    # both hosts by test_train_server / test_job_files
    "test_farm.py": "the farm is a client of the pack's routes",
    # a research benchmark's harness (bench/separation): it builds ComfyUI's UNet and goes through the pack's own
    # apply / export code, which test_apply, test_lora_files and test_trainer cover on both hosts
    "test_separation_bench.py": "the separation benchmark's harness",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in HOST_INDEPENDENT:
            item.add_marker(pytest.mark.host_independent)
        if item.path.name in FIRST_HOST_ONLY:
            item.add_marker(pytest.mark.first_host_only)
