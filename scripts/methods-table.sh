#!/usr/bin/env bash
# Issue 14's digits table: every registered method on the seven 32×32 digit tasks at a common
# budget of about 100 network evaluations per sample (DDRM also at its published 20), one
# resumable `daps eval` run (rerun to continue; WORKERS=n for one-thread shards):
#
#   scripts/methods-table.sh [RUN_DIR]          (default runs/methods)
#
# Each method runs on the tasks it supports (SVD methods and particle filters on linear tasks
# only). Writes OUT/{methods.txt,methods.json,methods.png,report.html} (OUT default
# results/digits/methods). Env: DIGITS (16), METHODS (below), WORKERS, DEVICE, DAPS_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/methods}
OUT=${OUT:-results/digits/methods}
M=daps-100,dps-100,ddrm,ddrm@steps=100,ddnm,pigdm,diffpir@steps=100,red-diff@steps=100
M=$M,pnp-dm@iterations=8@grid_steps=20,score-ald@levels=20@steps_each=5
M=$M,mcgdiff@steps=25@particles=4,fps@steps=25@particles=4
M=$M,daps-tweedie@annealing_steps=10@lanczos_steps=4@cg_steps=4
M=$M,daps-smc@particles=2@annealing_steps=50@ode_steps=1
METHODS=${METHODS:-$M}
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
ARGS=(eval --data digits --tasks all --methods "$METHODS" --limit "${DIGITS:-16}"
  --runs 1,phase-retrieval=4 --batch 16 --device "${DEVICE:-cpu}" --out "$RUN")
W=${WORKERS:-1}
if [ "$W" -gt 1 ]; then
  for k in $(seq 1 "$W"); do RAYON_NUM_THREADS=1 "$D" "${ARGS[@]}" --shard "$k/$W" & done
  wait
else
  "$D" "${ARGS[@]}"
fi
mkdir -p "$OUT"
"$D" report "$RUN" --baseline dps-100 --json "$OUT/methods.json" --html "$OUT/report.html" \
  --png "$OUT/methods.png" | tee "$OUT/methods.txt"
