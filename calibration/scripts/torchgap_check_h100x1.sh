#!/usr/bin/env bash
# One H100 (nvidia-h100-x1), one device call (<= 8 minutes with the build on a fresh machine): re-checks session 11's
# torchgap fixes. run_reference_h100x1.sh on the dense cases (seq 2k-16k), fp8 at 4k and MoE at 4k, with the refitted
# H100 profile: the backend now runs MCore's optimizer passes (optim.main_grad_cast, grad norm and clipping on fp32
# grads, optim.main_param_copy) as torch_reference.py does; import-trace times the fp8 casts from their GEMMs' ranges
# (the own-trace fit of the fp8 case no longer prices them twice). Then the backend-vs-PyTorch table by op class
# (torch_gap_table.py).
#
# Usage, from the repository root: calibration/scripts/torchgap_check_h100x1.sh OUT
# Writes OUT/table.md (PyTorch / backend / predictions / fits), OUT/gap_table.md, OUT/run.log and OUT/torchgap.tgz
# (the run's r/ folder: traces, imports, compares, fits), four files (the device tool returns at most eight).
set -u
OUT=$1
W=$(mktemp -d)
PROFILE=calibration/profiles/h100x1.json STEPS=5 BSTEPS=3 TORCH_FLAGS=--fuse-elementwise \
  timeout 450 bash calibration/scripts/run_reference_h100x1.sh "$W" dense dense_s4096_fp8 moe_s4096 > "$OUT/run.log" 2>&1
echo "run_reference exit $?" >> "$OUT/run.log"
cp "$W/table.md" "$OUT/table.md" 2>/dev/null
python3 calibration/scripts/torch_gap_table.py "$W/r" dense_s2048 dense_s4096 dense_s8192 dense_s16384 \
  dense_s4096_fp8 moe_s4096 > "$OUT/gap_table.md" 2>&1
tar czf "$OUT/torchgap.tgz" -C "$W" r
cat "$OUT/table.md" "$OUT/gap_table.md"
