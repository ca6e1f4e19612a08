"""unziplora/compat.py: what differs between the ComfyUI hosts, and the pack's code that goes through it."""

from __future__ import annotations

import sys
import types

import pytest

from unziplora_pack.nodes import routes, runtime
from unziplora_pack.unziplora import compat


def _fake_server_module(**class_attrs) -> types.ModuleType:
    module = types.ModuleType("server")
    module.PromptServer = type("PromptServer", (), class_attrs)
    return module


@pytest.mark.parametrize("declared", [False, True], ids=["0.33-no-instance-attr", "0.3.75-instance-None"])
def test_no_running_server_registers_nothing(monkeypatch, declared):
    # 0.33.0's PromptServer sets `instance` only in __init__: reading it outside a server raised AttributeError
    fake = _fake_server_module(**({"instance": None} if declared else {}))
    monkeypatch.setitem(sys.modules, "server", fake)
    monkeypatch.setattr(routes, "_registered", False)
    assert compat.prompt_server() is None
    routes.register_routes()  # no server: nothing to register on, and no error
    assert routes._registered is False
    runtime._emit("unziplora.progress", {"job": "x"})  # a job's events go nowhere, without an error


def test_running_server_gets_routes_and_events(monkeypatch):
    sent, added = [], []

    class Routes:
        def __getattr__(self, method):
            return lambda path: (lambda handler: added.append((method, path)))

    instance = types.SimpleNamespace(routes=Routes(), send_sync=lambda *a: sent.append(a))
    monkeypatch.setitem(sys.modules, "server", _fake_server_module(instance=instance))
    monkeypatch.setattr(routes, "_registered", False)
    assert compat.prompt_server() is instance
    routes.register_routes()
    assert ("get", "/unziplora/jobs") in added and ("post", "/unziplora/jobs/{job_id}/resume") in added
    runtime._emit("unziplora.progress", {"job": "x"})
    assert sent == [("unziplora.progress", {"job": "x"}, None)]


def test_the_real_server_module_outside_a_server():
    pytest.importorskip("server")  # ComfyUI's server.py, importable in the test process on either host
    assert compat.prompt_server() is None


def test_versions():
    assert compat._parse_version("0.33.0") == (0, 33, 0)
    assert compat._parse_version("0.3.75") == (0, 3, 75)
    assert compat._parse_version("1.2") == (1, 2, 0)
    assert compat.comfy_version() > (0, 3, 0)  # the host the tests run on
    assert compat.unknown_node_error() in ("invalid_prompt", "missing_node_type")


def test_dynamic_vram(monkeypatch):
    monkeypatch.setitem(sys.modules, "comfy.memory_management", types.SimpleNamespace(aimdo_enabled=True))
    assert compat.dynamic_vram_enabled() is True
    monkeypatch.setitem(sys.modules, "comfy.memory_management", types.SimpleNamespace())
    assert compat.dynamic_vram_enabled() is False
