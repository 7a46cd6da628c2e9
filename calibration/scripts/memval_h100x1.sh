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
mkdir -p "$OUT"
W=$(mktemp -d)
export PROFILE=calibration/profiles/h100x1.json STEPS=3 BSTEPS=2 TORCH_FLAGS=--fuse-elementwise
START=$SECONDS
timeout 420 bash calibration/scripts/run_reference_h100x1.sh "$W" dense_s4096 dense_s4096_rc moe_s4096 \
  moe_s4096_rc > "$OUT/run.log" 2>&1
echo "run_reference (first) exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
LEFT=$((480 - (SECONDS - START)))
if [ "$LEFT" -gt 60 ]; then
  timeout "$LEFT" bash calibration/scripts/run_reference_h100x1.sh "$W" dense_s8192 dense_s8192_rc >> "$OUT/run.log" 2>&1
  echo "run_reference (second) exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
fi
. "$(dirname "$0")/device_env.sh"  # $T
python3 calibration/reference/memory_validation.py "$T" "$W"/r > "$OUT/memory_table.md" 2>&1
python3 calibration/reference/reference_table.py "$W"/r/*/ > "$OUT/table.md" 2>&1
tar czf "$OUT/memval.tgz" -C "$W" --exclude='*.json.gz' r
cat "$OUT/memory_table.md" "$OUT/table.md"
