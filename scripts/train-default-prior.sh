#!/usr/bin/env bash
# Trains the default digits prior from scratch: the ADM `digits32` preset (1.19 M parameters) on
# the built-in MNIST training split (9,000 digits; the last 1,000 are held out), continuous-time
# DDPM ε objective, AdamW, EMA. Deterministic for a given seed and thread count.
#
#   scripts/train-default-prior.sh [OUT_DIR]        (default runs/digits32)
#
# If OUT_DIR already holds a run (e.g. after an interruption), it is resumed exactly where its
# last checkpoint (every 200 steps) stopped. The prior is then
#   --prior adm:OUT_DIR/model.safetensors      (architecture in OUT_DIR/model.json)
# and OUT_DIR/samples-stepNNNNNNN.png shows unconditional samples at each checkpoint.
#
# Cost: about 1.45 s per step at batch 32 on the 2-core development CPU (candle, no BLAS), 93 ms on
# an H100 with the cuda build (scripts/cuda-build-from-pypi.sh; the binary picks the GPU itself).
# The shipped weights (assets/digits32/) are the checkpoint at step 7,000 of this run (steps
# 1-2,400 on the CPU, the rest on the H100).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/digits32}
STEPS=${STEPS:-10000}
cargo build --release --bin daps
if [ -f "$OUT/train-state.safetensors" ]; then
  exec ./target/release/daps train --resume "$OUT" --steps "$STEPS"
fi
exec ./target/release/daps train --data digits --preset digits32 --objective ddpm \
  --steps "$STEPS" --batch-size 32 --lr 5e-4 --warmup 200 --weight-decay 0.01 --grad-clip 1 \
  --ema-halflife-kimg 500 --ema-rampup 0.05 --seed 0 \
  --checkpoint-every 200 --sample-count 16 --sample-steps 10 --out "$OUT"
