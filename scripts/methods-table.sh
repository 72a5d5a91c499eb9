#!/usr/bin/env bash
# Issue 14's digits table: every registered method on the seven 32×32 digit tasks at a common
# budget of about 100 network evaluations per sample (DDRM also at its published 20), one
# resumable `daps eval` run (rerun to continue; WORKERS=n for one-thread shards), on the 100
# held-out digits 9000–9099 by default (≈ 25 min on 2 cores; DIGITS=8 for a quick look):
#
#   scripts/methods-table.sh [RUN_DIR]          (default runs/methods)
#
# Each method runs on the tasks it supports (SVD methods and particle filters on linear tasks
# only). Writes OUT/{methods.txt,methods.json,methods.png,report.html} (OUT default
# results/digits/methods). Env: DIGITS (100), METHODS (below), WORKERS, DEVICE, DAPS_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/methods}
OUT=${OUT:-results/digits/methods}
# PnP-DM, Score-ALD and daps-tweedie are left out by default: at ~100 NFE the first two fail
# (9.8 and 11.0 dB on 16 digits of sr4, against 20.6 for DPS-100: their published budgets are
# 3,000+), and daps-tweedie's VJPs cost 4× the others' time for 16.7 dB
# (results/digits/methods/sr4-16digits.txt).
M=daps-100,dps-100,ddrm,ddrm@steps=100,ddnm,pigdm,diffpir@steps=100,red-diff@steps=100
M=$M,mcgdiff@steps=25@particles=4,fps@steps=25@particles=4
M=$M,daps-smc@particles=2@annealing_steps=50@ode_steps=1,daps-100@guidance=3
METHODS=${METHODS:-$M}
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
ARGS=(eval --data digits --tasks "${TASKS:-sr4,inpaint-box,inpaint-random,gaussian-blur,motion-blur,hdr,phase-retrieval}" --methods "$METHODS" --limit "${DIGITS:-100}"
  --runs 1,phase-retrieval=4 --batch 8 --device "${DEVICE:-cpu}" --out "$RUN")
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
