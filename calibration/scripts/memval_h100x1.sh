#!/usr/bin/env bash
# One H100 (nvidia-h100-x1), one device call (<= 9 minutes with the build on a fresh machine): issue 21's memory
# validation cases, dense and MoE with and without full recompute, after session 15's reference change (with bf16
# main grads the fp32 master grads exist only from the optimizer step's cast to the next zero_grad, as Megatron's).
# run_reference_h100x1.sh with the committed H100 profile (no calibrate) on dense_s4096, dense_s4096_rc, moe_s4096,
# moe_s4096_rc first, then dense_s8192 and dense_s8192_rc while the 480 s last; then the memory table
# (calibration/reference/memory_validation.py: the model's estimate, lowered again by this tree's twinstep, against
# torch's max allocated, with the reference-only terms of docs/memory.md "Validation").
#
# Usage, from the repository root: calibration/scripts/memval_h100x1.sh OUT
# Writes OUT/memory_table.md, OUT/table.md (reference_table.py: times and memory columns), OUT/run.log and
# OUT/memval.tgz (the run's r/ folder without the profiler traces).
set -u
OUT=$1
W=$(mktemp -d)
mkdir -p "$OUT"
export PROFILE=calibration/profiles/h100x1.json STEPS=3 BSTEPS=2 TORCH_FLAGS=--fuse-elementwise
START=$SECONDS
: > "$OUT/run.log"
for cases in "dense_s4096 dense_s4096_rc moe_s4096 moe_s4096_rc" "dense_s8192 dense_s8192_rc"; do
  left=$((480 - (SECONDS - START)))
  [ "$left" -gt 60 ] || { echo "skipped $cases: ${left} s left" >> "$OUT/run.log"; continue; }
  # shellcheck disable=SC2086
  timeout "$left" bash calibration/scripts/run_reference_h100x1.sh "$W" $cases >> "$OUT/run.log" 2>&1
  echo "run_reference ($cases) exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
done
. "$(dirname "$0")/device_env.sh"  # $T
python3 calibration/reference/memory_validation.py "$T" "$W"/r > "$OUT/memory_table.md" 2>&1
python3 calibration/reference/reference_table.py "$W"/r/*/ > "$OUT/table.md" 2>&1
tar czf "$OUT/memval.tgz" -C "$W" --exclude='*.json.gz' r
cat "$OUT/memory_table.md" "$OUT/table.md"
