#!/usr/bin/env bash
# This project against PyTorch on the same machine, back to back: `daps bench speed --quick`
# (FFHQ-256 ADM, random weights, batch 1: forward and forward+backward to the input) and
# scripts/speed-pytorch.py (the same architecture in plain torch, same thread count, same
# protocol: WARMUP untimed calls, then the best of REPS), then the ratios.
#
#   scripts/speed-compare.sh [OUT_DIR]          (default target/speed-compare)
#
# Env: THREADS (default: all cores), WARMUP (0), REPS (1), VENV (default /tmp/daps-torch-venv:
# created and filled with `pip install torch numpy` from PyPI when missing; ≈5 GB, the PyPI
# wheel is the CUDA build), DAPS_BIN (default ./target/release/daps, built when unset).
# Writes OUT_DIR/{daps.json,torch.json}. Outside the tests and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/speed-compare}
VENV=${VENV:-/tmp/daps-torch-venv}
THREADS=${THREADS:-$(nproc)}
WARMUP=${WARMUP:-0}
REPS=${REPS:-1}
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch numpy
fi
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
[ "$WARMUP" = 0 ] && [ "$REPS" = 1 ] || echo "note: daps bench speed --quick always runs 0 warm-up + 1 call; WARMUP/REPS apply to torch only" >&2
RAYON_NUM_THREADS=$THREADS "$D" bench speed --quick --json "$OUT/daps.json"
"$VENV/bin/python" scripts/speed-pytorch.py --threads "$THREADS" --warmup "$WARMUP" --reps "$REPS" | tee "$OUT/torch.json"
"$VENV/bin/python" - "$OUT/daps.json" "$OUT/torch.json" <<'PY'
import json, sys
d, t = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{d['cpu_model']}, {d['threads']} threads (daps) / {t['threads']} (torch {t['torch_version']})")
for k in ("ffhq256_forward_ms_b1", "ffhq256_forward_backward_ms_b1"):
    print(f"{k}: daps {d[k]:.0f} ms, torch {t[k]:.0f} ms, daps/torch = {d[k] / t[k]:.2f}")
print(f"daps forward: {d['ffhq256_forward_gflops_b1']:.1f} GFLOP/s = "
      f"{100 * d['ffhq256_forward_gemm_fraction_b1']:.0f}% of its GEMM rate ({d['gemm_gflops']:.1f} GFLOP/s)")
PY
