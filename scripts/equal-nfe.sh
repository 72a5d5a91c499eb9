#!/usr/bin/env bash
# Issue 12's equal-NFE digits table, as two resumable `daps eval` runs (rerun after a stop and
# it continues; set WORKERS or use deploy/ to shard):
#
#   scripts/equal-nfe.sh [RUN_DIR]             (default runs/equal-nfe)
#
# 1. accuracy: 100 held-out digits × every 32×32 task, phase retrieval best of 4 runs, at
#    1000 network evaluations per sample: DAPS-1K as the paper (τ = 0.01), DAPS-1K with the true
#    likelihood τ = σ_y (and a stable step size), each task's daps-tuned preset (settings chosen
#    on training digits), DPS-1000; baseline DPS-1000.
# 2. calibration: the first DIGITS_COVERAGE (20) of them with 16 posterior samples each
#    (`--samples 16`): the fraction of true pixels inside the samples' per-pixel interval
#    [x₍₁₎, x₍₁₆₎], whose nominal coverage for a calibrated sampler is 15/17 = 88.2%.
#
# Writes OUT/{equal-nfe.json,equal-nfe.txt,coverage.json,coverage.txt,report.html} and
# OUT/table.{json,txt}: both summaries merged (each row with its coverage on the first digits)
# (OUT default results/digits/equal-nfe). About 1.4k DPS-1000 and DAPS-1K solves of 32×32 digits
# plus 16× that for the coverage run on 20 digits: GPU hours (DEVICE=cuda) or days on 2 CPU cores.
#
# Env: METHODS (default below), WORKERS (processes of one thread each, shards of one run),
# DEVICE (cpu or cuda with DAPS_BIN=…), DIGITS (100), DIGITS_COVERAGE (20).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/equal-nfe}
OUT=${OUT:-results/digits/equal-nfe}
METHODS=${METHODS:-dps-1000,daps-1k,daps-1k@tau_rule=measurement@lr_rule=stable@lr=1,daps-tuned}
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
run() {
  local W=${WORKERS:-1}
  if [ "$W" -gt 1 ]; then
    for k in $(seq 1 "$W"); do RAYON_NUM_THREADS=1 "$D" "$@" --shard "$k/$W" & done
    wait
  else
    "$D" "$@"
  fi
}
COMMON=(eval --data digits --tasks all --methods "$METHODS" --device "${DEVICE:-cpu}")
run "${COMMON[@]}" --limit "${DIGITS:-100}" --runs 1,phase-retrieval=4 --batch 32 --out "$RUN/accuracy"
run "${COMMON[@]}" --limit "${DIGITS_COVERAGE:-20}" --samples 16 --batch 4 --out "$RUN/coverage"
mkdir -p "$OUT"
"$D" report "$RUN/accuracy" --baseline dps-1000 --json "$OUT/equal-nfe.json" \
  --html "$OUT/report.html" | tee "$OUT/equal-nfe.txt"
"$D" report "$RUN/coverage" --baseline dps-1000 --json "$OUT/coverage.json" | tee "$OUT/coverage.txt"
"$D" report "$OUT/equal-nfe.json" "$OUT/coverage.json" --baseline dps-1000 \
  --json "$OUT/table.json" | tee "$OUT/table.txt"
