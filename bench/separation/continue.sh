#!/usr/bin/env bash
# Continue the unnamed-world study (issue 18) where it stopped: the base in 15-minute chunks, then one process per
# seed in 10-minute chunks, so a shared machine's lock (/work/bin/heavy) is taken a chunk at a time; then the
# tables. Everything is cached under ~/.cache/unziplora-dev/separation/: run it again after a cut.
#   bash bench/separation/continue.sh                 # logs in ~/.cache/unziplora-dev/separation/logs/
#   HEAVY=env bash bench/separation/continue.sh       # on a machine of your own (no lock wrapper)
#   SERIAL=1 bash bench/separation/continue.sh        # seed 1 after seed 0 (leaves a core free for other work)
set -u
cd "$(dirname "$0")/../.."
if [ -x /work/bin/heavy ]; then HEAVY="${HEAVY:-/work/bin/heavy}"; else HEAVY="${HEAVY:-env}"; fi  # no lock wrapper: run as is
LOGS="${LOGS:-$HOME/.cache/unziplora-dev/separation/logs}"
mkdir -p "$LOGS"
until nice -n 10 $HEAVY .venv/bin/python -m bench.separation.base_chunk --budget-s 900 >> "$LOGS/base.log" 2>&1
      [ $? -ne 3 ]; do sleep 5; done
run_seed() {
  for _ in $(seq 1 300); do
    if nice -n 10 $HEAVY .venv/bin/python -m bench.separation --seeds "$1" --minutes 10 > "$LOGS/seed$1.last.log" 2>&1 \
       && ! grep -q "deadline reached" "$LOGS/seed$1.last.log"; then
      cat "$LOGS/seed$1.last.log" >> "$LOGS/seed$1.log"; return 0
    fi
    grep -v "^|" "$LOGS/seed$1.last.log" >> "$LOGS/seed$1.log"; sleep 5
  done
}
if [ -n "${SERIAL:-}" ]; then run_seed 0; run_seed 1; else run_seed 0 & run_seed 1 & wait; fi
.venv/bin/python -m bench.separation --report > "$LOGS/report.txt" 2>&1
echo "done: tables in $LOGS/report.txt; write them with: .venv/bin/python -m bench.separation --report --write-results"
