#!/usr/bin/env bash
# What bench/gpu_check.py needs on the device machine (Python 3.12, torch 2.11, no network), in <repo>/.whl:
# host B's ComfyUI tarball and the wheels of its requirements that the device image lacks. Run here, once:
#     bash bench/gpu_wheels.sh [path/to/comfyui-0.33.0.tar.gz]
# then carry ".whl" (about 57 MiB; the device's limit is 64 MiB for the tree and the carried paths together).
#
# comfy-kitchen is carried without its compiled CUDA/HIP backends (230 MB unpacked, 58 MB as a wheel, too
# big to carry): ComfyUI 0.33 imports it unconditionally, and without _C.abi3.so it registers only its eager
# and triton backends, which an fp16 SDXL never calls (they serve fp8/fp4/int8 weights). The frontend package
# is not carried either: gpu_check.py runs ComfyUI API-only with --front-end-root on an empty page.
set -euo pipefail
cd "$(dirname "$0")/.."
TARBALL=${1:-../shared/hosts/comfyui-0.33.0.tar.gz}
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
mkdir -p .whl
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
  --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl \
  av==16.0.1 comfy-aimdo==0.4.13 comfy-kitchen==0.2.31 torchsde==0.2.6 trampoline==0.1.2 alembic==1.20.1 \
  mako==1.4.3 sqlalchemy==2.1.9 greenlet==3.5.6 simpleeval==1.0.8 blake3==1.0.11 pydantic==2.14.4 \
  pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 \
  typing-inspection==0.4.5 typing-extensions==4.16.0
ck=$(ls .whl/comfy_kitchen-0.2.31-*.whl)
if unzip -l "$ck" | grep -q '_C\.abi3\.so'; then
  tmp=$(mktemp -d)
  (cd "$tmp" && unzip -q "$OLDPWD/$ck" && rm -f comfy_kitchen/backends/cuda/_C.abi3.so comfy_kitchen/backends/hip/_C.abi3.so \
    && sed -i '/backends\/\(cuda\|hip\)\/_C\.abi3\.so/d' comfy_kitchen-0.2.31.dist-info/RECORD \
    && rm -f "$OLDPWD/$ck" && zip -q -r "$OLDPWD/$ck" .)
  rm -rf "$tmp"
fi
cp "$TARBALL" .whl/comfyui-0.33.0.tar.gz
du -sh .whl
