#!/usr/bin/env bash
# The README's test command: installs everything it needs (scripts/setup_dev.sh, fast when already done),
# lints, then runs the whole test suite, live ComfyUI server and browser tests included.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/setup_dev.sh
venv=${UNZIPLORA_VENV:-$repo/.venv}
"$venv/bin/ruff" check .
set +e
"$venv/bin/python" -m pytest -q --durations=15 "$@"
rc=$?
set -e
# pytest exits 5 when nothing was collected: that is a failure here, never a pass.
if [ "$rc" -eq 5 ]; then echo "[test] ERROR: no tests were collected" >&2; exit 1; fi
exit "$rc"
