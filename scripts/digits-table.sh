#!/usr/bin/env bash
# The README's digits table: DAPS against DPS with the built-in prior on held-out digits, as one
# `daps eval` run (resumable: rerun this script after a stop and it continues).
#
#   scripts/digits-table.sh [RUN_DIR]          (default runs/digits-table)
#
# 100 held-out digits (9000..9099), every 32×32 task, DAPS at the demo budget (daps-50: 50
# annealing levels × 1 ODE step = 50 network evaluations) and DPS with the same 50 evaluations;
# phase retrieval best of 4 runs per digit. Writes OUT/{summary.json,table.txt,report.html}
# (OUT default results/digits/eval-100).
#
# Env: METHODS (default daps-50,dps-50; e.g. daps-50,dps-1000 for DPS at its own budget),
# WORKERS (default 1): processes of one thread each, as shards of the same run (on the 2-core VM
# two one-thread processes do ≈1.5× the work of one two-thread one); DEVICE (cpu, or cuda with
# DAPS_BIN=target-cuda/release/daps from scripts/cuda-build-from-pypi.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/digits-table}
OUT=${OUT:-results/digits/eval-100}
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
ARGS=(eval --data digits --limit "${DIGITS:-100}" --tasks all --methods "${METHODS:-daps-50,dps-50}"
  --runs 1,phase-retrieval=4 --batch "${BATCH:-32}" --device "${DEVICE:-cpu}" --out "$RUN")
W=${WORKERS:-1}
if [ "$W" -gt 1 ]; then
  for k in $(seq 1 "$W"); do RAYON_NUM_THREADS=1 "$D" "${ARGS[@]}" --shard "$k/$W" & done
  wait
else
  "$D" "${ARGS[@]}"
fi
mkdir -p "$OUT"
"$D" report "$RUN" --json "$OUT/summary.json" --html "$OUT/report.html" | tee "$OUT/table.txt"
