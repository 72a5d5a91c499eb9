#!/usr/bin/env bash
# DPS with its own 1000 steps (and DAPS-50 beside it) on held-out digits, on the CPU, in
# pieces: each job is one task on a range of digits, with its own JSON, so a stopped run keeps
# every finished job and a rerun skips them. WORKERS processes of one thread each pull jobs
# from a queue (on 2 cores two one-thread processes do ≈1.5× the work of one two-thread one).
#
#   scripts/dps1000-cpu.sh [OUT_DIR]      (default runs/dps1000-cpu)
#
# Env: TASKS (default "hdr phase-retrieval"), FIRST (0) and DIGITS (100): held-out digits
# 9000+FIRST .. 9000+DIGITS−1, CHUNK (digits per job, 5),
# WORKERS (2), DPS_STEPS (1000), DAPS_BIN (default target/release/daps). Then
#   daps report OUT_DIR/json-*.json --json merged.json
# prints the table. One digit-step (network forward + backward) takes 45–50 ms per worker on the
# 2-core VM: HDR over 100 digits ≈1.3 worker-hours, phase retrieval (best of 4) ≈5.7.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/dps1000-cpu}
mkdir -p "$OUT"
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=$(realpath "${DAPS_BIN:-target/release/daps}")
jobs="$OUT/jobs.txt"
: > "$jobs"
for task in ${TASKS:-hdr phase-retrieval}; do
  for ((first = ${FIRST:-0}; first < ${DIGITS:-100}; first += ${CHUNK:-5})); do
    echo "$task $first $(( ${DIGITS:-100} - first < ${CHUNK:-5} ? ${DIGITS:-100} - first : ${CHUNK:-5} ))" >> "$jobs"
  done
done
worker() {
  while read -r task first n <&3; do
    id="$task-$first"
    [ -e "$OUT/json-$id.json" ] && continue        # finished earlier
    mkdir "$OUT/lock-$id" 2>/dev/null || continue  # taken by another worker
    echo "$(date +%T) worker $1: $id" >> "$OUT/log.txt"
    if RAYON_NUM_THREADS=1 "$D" demo --tasks "$task" --first "$first" --digits "$n" \
      --dps-steps "${DPS_STEPS:-1000}" --batch 100 --grid-digits "$n" --out "$OUT/grid-$id.png" \
      --json "$OUT/part-$id.json" > "$OUT/out-$id.txt" 2>&1; then
      mv "$OUT/part-$id.json" "$OUT/json-$id.json"
    else
      echo "$(date +%T) worker $1: $id failed (see $OUT/out-$id.txt)" >> "$OUT/log.txt"
    fi
    rmdir "$OUT/lock-$id"
  done 3< "$jobs"
}
rm -rf "$OUT"/lock-*                               # left by a run that was stopped
for w in $(seq 1 "${WORKERS:-2}"); do worker "$w" & done
wait
"$D" report "$OUT"/json-*.json --json "$OUT/merged.json"
