"""The README's main job (scripts/main.py) and its helpers import without pytest: it is not a test dependency."""

from __future__ import annotations

import subprocess
import sys

from comfy_server import REPO

BLOCK_PYTEST = """
import builtins, runpy, sys
real = builtins.__import__
def no_pytest(name, *a, **k):
    if name == "pytest" or name.startswith("_pytest"):
        raise ImportError("pytest is not installed here")
    return real(name, *a, **k)
builtins.__import__ = no_pytest
sys.argv = ["main.py", "--help"]
runpy.run_path("scripts/main.py", run_name="__main__")
"""


def test_main_job_runs_without_pytest():
    done = subprocess.run([sys.executable, "-c", BLOCK_PYTEST], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
