#!/usr/bin/env bash
# Issue 14's budget table on the first 20 held-out digits (9000–9019, seed 0, the same
# measurements as every other digits table): each method at its published budget where that
# is above 100 NFE (RED-diff 1000 steps, PnP-DM, MCGdiff 64 × 100, FPS 5 × 1000: their task
# presets) and every method at a common 1000 NFE, beside the 100-digit runs of DPS-1000,
# DAPS-1K and daps-guided (results/digits/equal-nfe-100/) and the 100-NFE table
# (results/digits/methods/methods.json), all cut to the first 20 digits (`report --first 20`).
#
#   scripts/methods-budgets.sh [RUN_DIR]        (default runs/budgets; rerun to resume)
#
# ≈ 1.3 h on 2 cores for 20 digits (WORKERS=2 one-thread shards), ≈ 4.7 CPU-hours more per 40
# digits. A larger DIGITS on the same RUN_DIR extends its runs (finished jobs are kept). Writes
# OUT/budgets.{txt,json} (OUT default results/digits/methods). Env: DIGITS (20), WORKERS,
# DEVICE, DAPS_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/budgets}
OUT=${OUT:-results/digits/methods}
N=${DIGITS:-20}
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
ALL=sr4,inpaint-box,inpaint-random,gaussian-blur,motion-blur,hdr,phase-retrieval
M1000=ddrm@steps=1000,ddnm@steps=1000,diffpir@steps=1000,mcgdiff@steps=250@particles=4
M1000=$M1000,fps@steps=250@particles=4,daps-smc@particles=2@annealing_steps=100@ode_steps=5
M1000=$M1000,pigdm@steps=1000
# name | tasks | methods
# name | tasks | methods. Score-ALD (default 1000 levels × 3 = 3000 NFE) at 333 levels × 3 =
# 999 NFE, PnP-DM (3573 NFE; 3023 for phase retrieval) on a 28-point EDM grid: 976 / 857 NFE.
RUNS=("nfe1000b|$ALL|score-ald@levels=333"
  "nfe1000c|sr4,gaussian-blur,motion-blur,phase-retrieval|pnp-dm@grid_steps=28"
  "red|$ALL|red-diff"
  "nfe1000|$ALL|$M1000"
  "smc|inpaint-box,inpaint-random|mcgdiff,fps"
  "pnp|sr4,gaussian-blur,motion-blur,phase-retrieval|pnp-dm")
W=${WORKERS:-1}
for r in "${RUNS[@]}"; do
  IFS='|' read -r name tasks methods <<<"$r"
  ARGS=(eval --data digits --limit "$N" --seed 0 --batch 10 --device "${DEVICE:-cpu}"
    --tasks "$tasks" --methods "$methods" --out "$RUN/$name")
  case $tasks in *phase-retrieval*) ARGS+=(--runs 1,phase-retrieval=4) ;; esac
  if [ "$W" -gt 1 ]; then
    for k in $(seq 1 "$W"); do RAYON_NUM_THREADS=1 "$D" "${ARGS[@]}" --shard "$k/$W" & done
    wait
  else
    "$D" "${ARGS[@]}"
  fi
  "$D" report "$RUN/$name" --json "$RUN/$name.json" >/dev/null
done
mkdir -p "$OUT"
E=results/digits/equal-nfe-100
# (red.json first: its task order is the table's)
"$D" report "$RUN/red.json" "$E/dps1000-same-y.json" "$E/daps1k.json" "$E/guided.json" \
  "$RUN/nfe1000b.json" "$RUN/nfe1000c.json" "$RUN/nfe1000.json" "$RUN/pnp.json" "$RUN/smc.json" \
  "$OUT/methods.json" --baseline dps-1000 --first "$N" --json "$OUT/budgets.json" \
  --markdown "$OUT/budgets.md" | tee "$OUT/budgets.txt"
