#!/usr/bin/env bash
# The GPU check on a lent machine, set-up included, in one call. Here, once: `bash bench/gpu_wheels.sh` (fills the
# git-excluded .whl with host B's tarball and the wheels the device image lacks). Then:
#   run(command="bash bench/gpu_check_device.sh", carry=[".whl"], timeout_s=540)
# Prints each step's seconds since start; the check's JSON and ComfyUI's log land in $OUT.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/gpu_check_out}
mkdir -p "$out" /tmp/gpu_check_host
t0=$(date +%s)
step() { echo "[gpu_check_device] $1: $(( $(date +%s) - t0 )) s since start"; }
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$repo"/.whl/*.whl || exit 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
tar xzf "$repo/.whl/comfyui-0.33.0.tar.gz" -C /tmp/gpu_check_host || exit 1
step "set-up (carried wheels, ComfyUI 0.33.0 tree)"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
"$py" -c "import torch, comfy_aimdo.control; print('torch', torch.__version__, torch.cuda.device_count(), 'GPU(s)')" \
  || exit 1
"$py" "$repo/bench/gpu_check.py" --comfyui /tmp/gpu_check_host/ComfyUI --work /tmp/gpu_check_work \
  --json "$out/gpu_check.json" "$@"
rc=$?
cp /tmp/gpu_check_work/comfyui.log "$out/comfyui.log" 2>/dev/null
step "gpu_check exited $rc"
exit $rc
