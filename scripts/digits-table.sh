#!/usr/bin/env bash
# The README's digits table: DAPS against DPS with the built-in prior on held-out digits.
#
#   scripts/digits-table.sh [OUT_DIR]          (default results/digits)
#
# 1. 100 held-out digits (9000..9099), every 32×32 task, DAPS at the demo budget (daps-50:
#    50 annealing levels × 1 ODE step = 50 network evaluations) and DPS with the same 50
#    evaluations; phase retrieval best of 4 runs per digit. Writes table.json (every digit's
#    PSNR/SSIM) and grid.png.
# 2. DPS with its own 1000 steps on the first DPS1K_DIGITS held-out digits (default 2: one
#    DPS-1000 digit costs about 30 s per task on 2 cores), beside DAPS on the same digits.
#    The README's 100-digit DPS-1000 rows for five tasks ran on an H100: DEVICE=cuda
#    DPS1K_DIGITS=100 DAPS_BIN=target-cuda/release/daps (scripts/cuda-build-from-pypi.sh),
#    with --batch 100; HDR and phase retrieval ran on the CPU with scripts/dps1000-cpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/digits}
mkdir -p "$OUT"
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
$D demo --digits "${DIGITS:-100}" --dps-steps 50 --out "$OUT/grid.png" --json "$OUT/table.json" \
  | tee "$OUT/table.txt"
$D demo --digits "${DPS1K_DIGITS:-2}" --dps-steps 1000 --device "${DEVICE:-cpu}" \
  --batch "${BATCH:-32}" --out "$OUT/grid-dps1000.png" \
  --json "$OUT/dps1000.json" | tee "$OUT/dps1000.txt"
