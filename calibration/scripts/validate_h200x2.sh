#!/usr/bin/env bash
# On the two-H200 machine, from a source tree: builds twinstep, the backend GPU tests and the calibration tests,
# runs the GPU tests, measures every validation case (calibration/validation/h200x2/cases.txt), predicts each with the
# committed profile (twinstep simulate, as the CI test does) and tabulates the accuracy bar (validation_table.py);
# packs everything into OUT/results.tgz.
# Usage: REV=<git revision> calibration/scripts/validate_h200x2.sh OUT. Every mpirun reads /dev/null.
set -u
OUT=$1
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $B, $T, results_in
results_in "$OUT" traces
echo "== build $(date +%T) rev ${REV:-unknown}"
build_gpu "$R/build.log" twinstep backend_tests || exit 1
gpu_info "$R"
echo "== GPU tests $(date +%T)"
timeout 150 $MPI -np 2 $B/tests/backend/backend_tests --order decl -d yes > "$R/gpu_tests.log" 2>&1 < /dev/null
echo "backend_tests under mpirun -np 2: exit $?"; grep -E "passed|failed|FAILED|test cases" "$R/gpu_tests.log" | tail -8
echo "== validation $(date +%T)"
grep -v '^#' calibration/validation/h200x2/cases.txt | while IFS='|' read -r name gpus flags; do
  name=$(echo $name); gpus=$(echo $gpus)
  model="--model calibration/validation/models/llama3-8b-4l.json"; case "$flags" in *--model*) model="";; esac
  $T lower $model --gpus $gpus $flags -o "$R/s.json" > "$R/traces/$name.lower.log" 2>&1 < /dev/null \
    || { echo "$name: lower failed: $(tail -1 "$R/traces/$name.lower.log")"; continue; }
  timeout 75 $MPI -np $gpus $T run "$R/s.json" -o "$R/traces/$name.trace.json" --warmup 2 --steps 5 \
    --timeout-s 30 > "$R/traces/$name.run.log" 2>&1 < /dev/null
  echo "$name: exit $? $(tail -1 "$R/traces/$name.run.log")"
  $T simulate "$R/s.json" --cluster h200x2-nvlink --gpus $gpus --profile calibration/profiles/h200x2.json --fidelity analytic \
    -o "$R/traces/$name.pred.json" > "$R/traces/$name.pred.log" 2>&1 < /dev/null || echo "$name: simulate failed"
done
echo "== accuracy bar on the new traces $(date +%T)"
python3 calibration/scripts/validation_table.py "$R/traces" 2>&1 | tee "$R/table.md"
echo "== done $(date +%T)"
