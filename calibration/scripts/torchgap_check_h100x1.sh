#!/usr/bin/env bash
# One H100 (nvidia-h100-x1), one device call (<= 8 minutes with the build on a fresh machine): re-checks session 11's
# torchgap fixes. run_reference_h100x1.sh with the refitted H100 profile on dense_s4096, fp8 and MoE at 4k first,
# then dense at 4 micro-batches (issue 19's cross-fit check: the fit from dense_s4096 predicting another micro-batch
# count) and seq 2k, 8k, 16k while the 450 s last: the backend now runs MCore's optimizer passes
# (optim.main_grad_cast, grad norm and clipping on fp32 grads, optim.main_param_copy) as torch_reference.py does, and
# the fp8 forward casts include the weights on the first micro-batch; import-trace times the fp8 casts from their
# GEMMs' ranges (the own-trace fit of the fp8 case no longer prices them twice). Then the backend-vs-PyTorch table
# by op class (torch_gap_table.py).
#
# Usage, from the repository root: calibration/scripts/torchgap_check_h100x1.sh OUT
# Writes OUT/table.md (PyTorch / backend / predictions / fits), OUT/gap_table.md, OUT/run.log and OUT/torchgap.tgz
# (the run's r/ folder: traces, imports, compares, fits), four files (the device tool returns at most eight).
set -u
OUT=$1
mkdir -p "$OUT"
W=$(mktemp -d)
export PROFILE=calibration/profiles/h100x1.json STEPS=5 BSTEPS=3 TORCH_FLAGS=--fuse-elementwise
START=$SECONDS
# The cases the fixes are checked on first (the build comes with them), then the other sequence lengths while the
# call's time lasts (the second call's cross-fit reuses the first's fit from dense_s4096, kept in build-gpu/).
timeout 400 bash calibration/scripts/run_reference_h100x1.sh "$W" dense_s4096 dense_s4096_fp8 moe_s4096 \
  > "$OUT/run.log" 2>&1
echo "run_reference (first) exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
LEFT=$((450 - (SECONDS - START)))
if [ "$LEFT" -gt 60 ]; then
  timeout "$LEFT" bash calibration/scripts/run_reference_h100x1.sh "$W" dense_s4096_mb4 dense_s2048 dense_s8192 \
    dense_s16384 >> "$OUT/run.log" 2>&1
  echo "run_reference (second) exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
fi
python3 calibration/reference/reference_table.py "$W"/r/*/ > "$OUT/table.md" 2>&1
python3 calibration/scripts/torch_gap_table.py "$W/r" dense_s2048 dense_s4096 dense_s8192 dense_s16384 \
  dense_s4096_mb4 dense_s4096_fp8 moe_s4096 > "$OUT/gap_table.md" 2>&1
tar czf "$OUT/torchgap.tgz" -C "$W" r
cat "$OUT/table.md" "$OUT/gap_table.md"
