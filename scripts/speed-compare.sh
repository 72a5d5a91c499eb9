#!/usr/bin/env bash
# This project against PyTorch on the same machine, back to back, then the ratios:
# 1. `daps bench speed --quick` (FFHQ-256 ADM, random weights, batch 1: forward and
#    forward+backward to the input) and scripts/speed-pytorch.py (the same architecture in plain
#    torch, same thread count, same protocol: WARMUP untimed calls, then the best of REPS);
# 2. DAPS-1K on BATCH held-out digits (one batch; phase retrieval and Gaussian blur, each task's
#    DAPS-1K preset) with the built-in digits prior: `daps bench speed`'s digits figures and
#    scripts/speed-digits-pytorch.py, the OFFICIAL DAPS code (DAPS_DIR) running the same
#    network weights on the same digits and measurements. LEVELS annealing levels per task
#    instead of 200 (every level costs the same: 5 network calls + 100 Langevin steps); the
#    ratio per level is the ratio per solve.
#
#   scripts/speed-compare.sh [OUT_DIR]          (default target/speed-compare)
#
# Env: THREADS (default: all cores), WARMUP (0), REPS (1), LEVELS (2), BATCH (10: digits per
# batch in part 2; 1 times a one-digit solve), REPEAT (1: digits pairs run, alternating; the
# fastest level per task and side is kept), DIGITS_ONLY (0; 1 skips
# part 1, minutes on 2 cores), VENV (default /tmp/daps-torch-venv: created and filled from
# PyPI when missing — torch numpy, and tqdm torchdiffeq scipy pyyaml packaging pillow for the
# official code; ≈5 GB, the PyPI wheel is the CUDA build), DAPS_DIR (default
# target/daps-official: a checkout of github.com/zhangbingliang2019/DAPS, cloned when
# missing), DAPS_BIN (default ./target/release/daps, built when unset).
# Writes OUT_DIR/{daps.json,torch.json,torch-digits.json,digits.safetensors,digits.json}.
# Outside the tests and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/speed-compare}
VENV=${VENV:-/tmp/daps-torch-venv}
THREADS=${THREADS:-$(nproc)}
WARMUP=${WARMUP:-0}
REPS=${REPS:-1}
LEVELS=${LEVELS:-2}
BATCH=${BATCH:-10}
REPEAT=${REPEAT:-1}
DIGITS_ONLY=${DIGITS_ONLY:-0}
DAPS_DIR=${DAPS_DIR:-target/daps-official}
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch numpy
fi
"$VENV/bin/python" -c "import tqdm, torchdiffeq, scipy, yaml, packaging, PIL" 2>/dev/null ||
  "$VENV/bin/pip" install -q tqdm torchdiffeq scipy pyyaml packaging pillow
[ -f "$DAPS_DIR/sampler.py" ] || git clone -q https://github.com/zhangbingliang2019/DAPS "$DAPS_DIR"
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
[ "$WARMUP" = 0 ] && [ "$REPS" = 1 ] || echo "note: daps bench speed --quick always runs 0 warm-up + 1 call; WARMUP/REPS apply to torch only" >&2
DIGITS="--digits-levels $LEVELS --digits-batch $BATCH --digits-data $OUT/digits.safetensors --json $OUT/daps.json"
if [ "$DIGITS_ONLY" = 1 ]; then
  RAYON_NUM_THREADS=$THREADS "$D" bench speed --digits-only $DIGITS
  echo '{}' > "$OUT/torch.json"
else
  RAYON_NUM_THREADS=$THREADS "$D" bench speed --quick $DIGITS
  "$VENV/bin/python" scripts/speed-pytorch.py --threads "$THREADS" --warmup "$WARMUP" --reps "$REPS" | tee "$OUT/torch.json"
fi
"$VENV/bin/python" scripts/speed-digits-pytorch.py --official "$DAPS_DIR" --threads "$THREADS" \
  --digits "$OUT/digits.safetensors" | tee "$OUT/torch-digits.json"
# REPEAT > 1: more (daps, official) digits pairs, alternating, on the same digits file; per task
# and side the run with the fastest level is kept whole (its parts add up to its level), so a
# machine whose speed drifts between runs biases neither side. The runs stay as *.repN.json.
for i in $(seq 2 "$REPEAT"); do
  RAYON_NUM_THREADS=$THREADS "$D" bench speed --digits-only --digits-levels "$LEVELS" \
    --digits-batch "$BATCH" --json "$OUT/daps.rep$i.json" > /dev/null
  "$VENV/bin/python" scripts/speed-digits-pytorch.py --official "$DAPS_DIR" --threads "$THREADS" \
    --digits "$OUT/digits.safetensors" > "$OUT/torch-digits.rep$i.json"
done
if [ "$REPEAT" -gt 1 ]; then
  cp "$OUT/daps.json" "$OUT/daps.rep1.json"
  cp "$OUT/torch-digits.json" "$OUT/torch-digits.rep1.json"
  "$VENV/bin/python" - "$OUT" "$REPEAT" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
for side in ("daps", "torch-digits"):
    runs = [json.load(open(f"{out}/{side}.rep{i}.json")) for i in range(1, n + 1)]
    best = dict(runs[0])
    for task in ("phase_retrieval", "gaussian_blur"):
        pre = f"digits_daps1k_{task}_"
        pick = min(runs, key=lambda r: r[pre + "level_ms"])
        best.update({k: v for k, v in pick.items() if k.startswith(pre)})
    best["digits_runs"] = n
    json.dump(best, open(f"{out}/{side}.json", "w"), indent=1)
PY
fi
"$VENV/bin/python" - "$OUT/daps.json" "$OUT/torch.json" "$OUT/torch-digits.json" <<'PY'
import json, sys
d, t, td = (json.load(open(p)) for p in sys.argv[1:4])
print(f"{d['cpu_model']}, {d['threads']} threads (daps) / {td['threads']} (torch {td['torch_version']})")
for k in ("ffhq256_forward_ms_b1", "ffhq256_forward_backward_ms_b1"):
    if k in t:
        print(f"{k}: daps {d[k]:.0f} ms, torch {t[k]:.0f} ms, daps/torch = {d[k] / t[k]:.2f}")
if "ffhq256_forward_gflops_b1" in d:
    print(f"daps forward: {d['ffhq256_forward_gflops_b1']:.1f} GFLOP/s = "
          f"{100 * d['ffhq256_forward_gemm_fraction_b1']:.0f}% of its GEMM rate ({d['gemm_gflops']:.1f} GFLOP/s)")
print(f"DAPS-1K, {d['digits_daps1k_digits']} digits as one batch, {d['digits_daps1k_levels']} levels "
      f"per task (of 200), fastest of {d.get('digits_runs', 1)} alternating run(s) per side, ms per "
      f"level (D(x, 1) max |daps − torch| = {td['d_sigma1_max_abs_diff']:.1e}):")
for task in ("phase_retrieval", "gaussian_blur"):
    k = lambda part: f"digits_daps1k_{task}_{part}"
    dx0 = d[k("operator_ms")] + d[k("x0_step_ms")]
    rows = [("level", d[k("level_ms")], td[k("level_ms")]),
            ("network (5 calls)", d[k("network_ms")], td[k("network_ms")]),
            ("x0 step (100 Langevin, operator incl.)", dx0, td[k("x0_step_ms")]),
            ("other", d[k("other_ms")], td[k("other_ms")])]
    print(f"  {task} (official ‖A(x) − y‖ RMS / σ_y = {td[k('residual_rms_over_sigma_y')]:.3f}):")
    for name, a, b in rows:
        print(f"    {name}: daps {a:.0f}, official {b:.0f}, official/daps = {b / max(a, 1e-9):.2f}")
PY
