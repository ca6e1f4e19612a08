"""Test set-up: ComfyUI on sys.path, the pack imported as a package (as ComfyUI imports it), shared fixtures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "unziplora_pack"


def _import_pack():
    """Import the repo root as a package under a fixed name, like ComfyUI's load_custom_node does."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_server import comfy_dir  # noqa: E402

_comfy = comfy_dir()
if not (_comfy / "comfy").is_dir():
    raise RuntimeError(f"ComfyUI not found at {_comfy}: run `bash scripts/setup_dev.sh` or set COMFYUI_DIR")
if str(_comfy) not in sys.path:
    sys.path.insert(0, str(_comfy))

# ComfyUI picks its device when comfy.model_management is first imported: without a GPU driver it must be told.
import comfy.cli_args  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    comfy.cli_args.args.cpu = True
_import_pack()


@pytest.fixture(scope="session")
def pack():
    return sys.modules[PACK_NAME]


@pytest.fixture
def tiny_sdxl():
    """A fresh tiny SDXL-shaped ModelPatcher (fp32, CPU, seeded weights)."""
    from tiny_models import build_tiny_sdxl

    return build_tiny_sdxl(seed=0)


# --- live ComfyUI server fixtures (the helpers: tests/comfy_server.py, which scripts use without pytest) ---
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
    "test_adamw_bf16.py", "test_bad_inputs.py", "test_columns.py", "test_cpu_threads.py", "test_gpu_check.py",
    "test_job_records.py", "test_jobs.py", "test_main_without_pytest.py", "test_retention.py", "test_schedule.py", "test_step_ops.py",
}


# Live tests whose subject is a client of ComfyUI's HTTP API, the same on both hosts, and whose cost is high (two
# servers and a Ray instance): run on the first host only, to keep the two-host CI run within its time.
FIRST_HOST_ONLY = {"test_farm.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in HOST_INDEPENDENT:
            item.add_marker(pytest.mark.host_independent)
        if item.path.name in FIRST_HOST_ONLY:
            item.add_marker(pytest.mark.first_host_only)
