#!/usr/bin/env bash
# The equal-NFE digits table (issue 12) from the stored per-run summaries in
# results/digits/equal-nfe-100/ (each `daps report RUN --json` of a `daps eval` run with
# --seed 0 on digits 9000–9099, so every run solved the same measurements): one table, DPS-1000
# the baseline of the paired differences, the `daps-tuned` rows under that name (they ran
# under the explicit specs the preset holds), coverage runs joined to their rows.
#
#   scripts/equal-nfe-table.sh            writes results/digits/equal-nfe.{json,txt}
#
# and, on the first 20 of those digits, the same rows beside DAPS-1K and daps-guided with the
# calibrated likelihood τ = σ_y (tau-*.json: `…@tau_rule=measurement@lr_rule=stable@lr=1`):
# results/digits/equal-nfe-tau.{json,txt}.
#
# Env: DAPS_BIN (default ./target/release/daps, built when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${DAPS_BIN:-}" ] || cargo build --release --bin daps
D=${DAPS_BIN:-./target/release/daps}
R=results/digits/equal-nfe-100
files=()
for f in daps1k dps1000-same-y tuned tuned-motion-blur tuned-hdr guided \
  coverage-gaussian-blur coverage-dps-gaussian-blur coverage-tuned-motion-blur \
  coverage-dps-motion-blur coverage-guided-motion-blur coverage-guided-inpaint-random \
  coverage-dps-inpaint-random coverage-guided-sr4 coverage-dps-sr4 \
  coverage-box-pr-hdr coverage-daps1k-sr4-random-motion coverage-tuned-hdr coverage-tuned-sr4; do
  [ -f "$R/$f.json" ] && files+=("$R/$f.json")
done
"$D" report "${files[@]}" --baseline dps-1000 \
  --as 'daps-tuned=daps-gaussian@sigma_min=0.01@sigma_min_ode=0.002' \
  --as 'daps-tuned=daps-1k@sigma_min=0.01@sigma_min_ode=0.002' \
  --json results/digits/equal-nfe.json | tee results/digits/equal-nfe.txt
T=()
for f in tau-daps1k tau-guided; do
  [ -f "$R/$f.json" ] && T+=("$R/$f.json")
done
if [ ${#T[@]} -gt 0 ]; then
  CAL=@tau_rule=measurement@lr_rule=stable@lr=1
  "$D" report "$R/daps1k.json" "$R/dps1000-same-y.json" "$R/tuned.json" "$R/tuned-motion-blur.json" \
    "$R/tuned-hdr.json" "$R/guided.json" "${T[@]}" --baseline dps-1000 --first 20 \
    --as 'daps-tuned=daps-gaussian@sigma_min=0.01@sigma_min_ode=0.002' \
    --as 'daps-tuned=daps-1k@sigma_min=0.01@sigma_min_ode=0.002' \
    --as "daps-1k-calibrated=daps-1k$CAL" --as "daps-guided-calibrated=daps-guided$CAL" \
    --json results/digits/equal-nfe-tau.json | tee results/digits/equal-nfe-tau.txt
fi
