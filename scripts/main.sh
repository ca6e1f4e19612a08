#!/usr/bin/env bash
# The README's main-job command: set up (fast when done), then train a content/style pair on one image through
# a real ComfyUI server and use it. Arguments go to scripts/main.py (--ckpt for a real SDXL, --gpu, --image ...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup_dev.sh" >&2
exec "${UNZIPLORA_VENV:-$repo/.venv}/bin/python" "$repo/scripts/main.py" "$@"
