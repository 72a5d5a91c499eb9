#!/usr/bin/env bash
# The GPU check of issue 16 in one run: the device tests (tests/device.rs: operators, noise and a
# DAPS run on CUDA against the CPU, and `bench speed --device cuda` on a tiny network), the GPU
# speed figures (`daps bench speed --device cuda --quick`) and a small DAPS-1K digits eval on CUDA.
# Everything it writes goes to $OUT (at most 8 files come back from the device machine).
#
# The GPU machine has no Rust and no internet, so the binaries are built HERE and carried:
#
#   1. here, in the repository root (the checkout the `run` tool sends), on a machine with
#      internet (pip reaches PyPI) but no GPU or CUDA toolkit needed:
#        scripts/cuda-build-from-pypi.sh          # ≈ 30–60 min on 2 cores the first time
#          → target-cuda/release/daps, target-cuda/release/device-test (sm_90, CUDA 13.0)
#        scripts/gpu-check.sh pack                # strips and xz-compresses both into gpu-bin/
#      (gpu-bin/ is in .gitignore; pack checks that it fits the 64 MiB a run may carry.)
#   2. through the `run` tool (steps capped at 150 + 180 + 150 s; expect ≈ 3–5 minutes plus the
#      machine's start, of the 15 minutes a task gets: room for one rerun):
#        run(command="bash scripts/gpu-check.sh", carry=["gpu-bin"], timeout_s=540)
#      The files come back under the reply's files_at: env.txt, device-tests.txt,
#      speed-gpu.json, speed-gpu.txt, eval.txt, eval-summary.json.
#
# A second mode for the rest of the device time, after the check:
#        run(command="bash scripts/gpu-check.sh tables", carry=["gpu-bin"], timeout_s=480)
#      issue 12's equal-NFE accuracy table on 100 held-out digits (DAPS-1K, DPS-1000, DAPS-1K with
#      τ = σ_y; every task, phase retrieval best of 4) as three resumable `daps eval` runs on CUDA,
#      batch 100; each method under its own time limit, so a slow one still leaves the others.
#      Back: tables.txt, equal-nfe.json and run.tar.xz (the run's records and measurements:
#      unpack it into runs/ here: `daps report` reads it, the same eval command on the CPU continues it). The
#      measurements are seeded per task and digit, so digits 9000–9009 see the same y as the
#      CPU runs in runs/equal-nfe-10 (m1 DPS-1000, m2 DAPS-1K, m3 DAPS-1K τ = σ_y).
#
# Each step has its own timeout; a failed step is reported and the next one still runs. The
# binaries need a CUDA 13 runtime (driver ≥ 580) and cuBLAS / cuRAND / NVRTC 13: the script
# looks for them in the usual CUDA folders and in Python's nvidia-* wheels (PyTorch's).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = pack ]; then
  set -e
  mkdir -p gpu-bin
  for b in daps device-test; do
    src=target-cuda/release/$b
    [ -x "$src" ] || { echo "missing $src: run scripts/cuda-build-from-pypi.sh first" >&2; exit 1; }
    cp "$src" "gpu-bin/$b" && strip "gpu-bin/$b"
    xz -T2 -9 -f "gpu-bin/$b"
  done
  du -ch gpu-bin/* | tail -1
  size=$(du -cb gpu-bin/* | tail -1 | cut -f1)
  [ "$size" -lt $((60 * 1024 * 1024)) ] || { echo "gpu-bin is over 60 MiB: too big to carry" >&2; exit 1; }
  echo "packed; now: run(command=\"bash scripts/gpu-check.sh\", carry=[\"gpu-bin\"], timeout_s=540)"
  exit 0
fi

OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
BIN=/tmp/daps-gpu
mkdir -p "$BIN"
for b in daps device-test; do
  xz -dc "gpu-bin/$b.xz" > "$BIN/$b" && chmod +x "$BIN/$b" || { echo "no gpu-bin/$b.xz (carry gpu-bin)"; exit 1; }
done

# CUDA 13 libraries: the first folder holding each of them.
libs=""
# (libcuda.so.1 is the driver's; the binaries were linked against a stub of it.)
for lib in libcuda.so.1 libcublasLt.so.13 libcublas.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  d=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/local/cuda*/targets/x86_64-linux/lib \
        /usr/local/cuda*/lib64 /opt /usr/local/lib /usr/lib/python3*/ -name "$lib" 2>/dev/null | head -1)
  [ -n "$d" ] && libs="$libs:$(dirname "$d")"
done
libs=$(echo "$libs" | tr ':' '\n' | awk 'NF && !seen[$0]++' | paste -sd:)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DAPS_BIN=$BIN/daps

{
  date -u
  nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  nproc
} > "$OUT/env.txt"

step() { # name, timeout (s), command…
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/env.txt"
}

if [ "${1:-}" = tables ]; then
  RUN=/tmp/daps-gpu-tables
  # One run folder per method (an eval folder holds one method list); reported together.
  i=0
  for m in dps-1000 daps-1k "daps-1k@tau_rule=measurement@lr_rule=stable@lr=1"; do
    i=$((i + 1))
    step "eval $m" "${TABLE_STEP_S:-140}" bash -c "$BIN/daps eval --device cuda --data digits --limit 100 \
      --tasks all --methods '$m' --runs 1,phase-retrieval=4 --batch 100 --out $RUN/m$i >> '$OUT/tables.txt' 2>&1"
  done
  $BIN/daps report $RUN/m1 $RUN/m2 $RUN/m3 --baseline dps-1000 --json "$OUT/equal-nfe.json" >> "$OUT/tables.txt" 2>&1
  tar -C /tmp -cJf "$OUT/run.tar.xz" daps-gpu-tables
  cat "$OUT/env.txt"
  exit 0
fi

# 1. The device tests, one at a time, with their printed lines.
step device-tests 150 bash -c "$BIN/device-test --test-threads 1 --nocapture > '$OUT/device-tests.txt' 2>&1"

# 2. The speed figures: CPU as always, then the GPU ones (gpu_* keys).
step speed 180 bash -c "$BIN/daps bench speed --device cuda --quick --json '$OUT/speed-gpu.json' > '$OUT/speed-gpu.txt' 2>&1"

# 3. DAPS-1K on 10 held-out digits, two tasks, on CUDA; the report's table and summary.
rm -rf /tmp/daps-gpu-eval
step eval 150 bash -c "$BIN/daps eval --device cuda --tasks gaussian-blur,phase-retrieval --methods daps-1k \
  --limit 10 --batch 10 --out /tmp/daps-gpu-eval > '$OUT/eval.txt' 2>&1 \
  && $BIN/daps report /tmp/daps-gpu-eval --json '$OUT/eval-summary.json' >> '$OUT/eval.txt' 2>&1"
cat "$OUT/env.txt"
