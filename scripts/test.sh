#!/usr/bin/env bash
# The README's test command: installs everything it needs (scripts/setup_dev.sh, fast when already done),
# lints, then runs the whole test suite (unit, live ComfyUI server and browser tests) on each host:
#   host a  ComfyUI 0.3.75 with its pinned frontend 1.32.9 (always)
#   host b  ComfyUI 0.33.0 with frontend 1.58.1, when ../shared/hosts/comfyui-0.33.0.tar.gz is there
#           ($UNZIPLORA_HOSTS_DIR elsewhere); without it host b is skipped, and the run says so.
# UNZIPLORA_TEST_HOSTS="a" (or "b") runs one host; COMFYUI_DIR=<your ComfyUI> runs only against that one.
# Arguments go to pytest (e.g. `bash scripts/test.sh tests/test_compat.py -x`).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=${UNZIPLORA_VENV:-$repo/.venv}
hosts_dir=${UNZIPLORA_HOSTS_DIR:-$repo/../shared/hosts}
say() { printf '[test] %s\n' "$*"; }

if [ -n "${COMFYUI_DIR:-}" ]; then
  hosts=a
  say "COMFYUI_DIR=$COMFYUI_DIR: testing that ComfyUI only (host b skipped)"
elif [ -n "${UNZIPLORA_TEST_HOSTS:-}" ]; then
  hosts=$UNZIPLORA_TEST_HOSTS
else
  hosts="a b"
fi
case " $hosts " in
  *" b "*)
    if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f "$hosts_dir/comfyui-0.33.0.tar.gz" ] \
        && [ ! -f "$repo/.comfyui-0.33.0/.extracted-0.33.0" ]; then
      say "host b SKIPPED: no $hosts_dir/comfyui-0.33.0.tar.gz (testing ComfyUI 0.3.75 only)"
      hosts=${hosts//b/}
    fi ;;
esac

for h in $hosts; do bash scripts/setup_dev.sh --host "$h"; done
# The suite runs several torch processes at once on few cores (pytest, live ComfyUI servers, Chromium, Ray). With
# OpenMP's default wait policy each one's threads spin at every barrier and burn the cores the others need: a
# tiny-model KSampler prompt took 27-34 s beside one other busy process, 7-13 s with passive waiting (2 cores).
# Inherited by every server the tests start; a value set by the caller wins.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
"$venv/bin/ruff" check .

results=() failed=0 first=1
# the browser extension's pure helpers (web/js/format.js, plot.js), without a browser: Node's own test runner
if command -v node >/dev/null; then
  if node --test tests/js/; then results+=("JS unit tests (node --test tests/js): passed")
  else results+=("JS unit tests (node --test tests/js): FAILED"); failed=1; fi
else
  results+=("JS unit tests: FAILED, no node (scripts/setup_dev.sh installs Debian's nodejs)"); failed=1
fi
for h in $hosts; do
  t0=$(date +%s)
  # tests that touch no ComfyUI code (marker host_independent, tests/conftest.py) run on the first host only;
  # with arguments (a chosen file or -k) everything chosen runs on every host
  only=()
  if [ "$first" -eq 0 ] && [ "$#" -eq 0 ]; then
    only=(-m "not host_independent and not first_host_only")
    say "host $h: host-independent and first-host-only tests ran on the first host; skipping them here"
  fi
  first=0
  set +e
  # every test's time, per host, kept with the screenshots (the slowest 15 are printed below)
  junit=(--junitxml="$repo/test-artifacts/junit-host-$h.xml")
  if [ "$h" = b ]; then
    # host b's paths, written by setup_dev.sh --host b
    (set -a; . "$repo/.comfyui-b.env"; set +a; "$venv/bin/python" -m pytest -q --durations=15 "${junit[@]}" "${only[@]}" "$@")
  else
    "$venv/bin/python" -m pytest -q --durations=15 "${junit[@]}" "${only[@]}" "$@"
  fi
  rc=$?
  set -e
  # pytest exits 5 when nothing was collected: that is a failure here, never a pass.
  if [ "$rc" -eq 5 ]; then say "ERROR: no tests were collected on host $h"; rc=1; fi
  [ "$rc" -eq 0 ] || failed=1
  results+=("host $h: $([ "$rc" -eq 0 ] && echo passed || echo "FAILED (pytest exit $rc)") in $(( $(date +%s) - t0 )) s")
done
for r in "${results[@]}"; do say "$r"; done
case " $hosts " in *" b "*) ;; *) say "host b (ComfyUI 0.33.0, frontend 1.58.1) was not tested" ;; esac
exit "$failed"
