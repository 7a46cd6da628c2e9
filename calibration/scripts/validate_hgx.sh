#!/usr/bin/env bash
# On one HGX H200 node (NVSwitch; device kinds nvidia-h200-x4 / nvidia-h200-x8), from a source tree: builds twinstep
# and the backend GPU tests, runs the GPU tests (mpirun -np 2), measures every case of CASES with mpirun -np <the
# case's GPUs>, predicts each (twinstep simulate on cluster hgx-h200, analytic fidelity, as the CI test does) with the
# committed two-GPU profile and, if given, with the fresh N-GPU profile, and tabulates both (validation_table.py);
# packs everything into OUT/results.tgz.
# Usage: REV=<git revision> calibration/scripts/validate_hgx.sh OUT N CASES [PROFILE_N]
#   N: the node's GPU count used (4 or 8; names the prediction folder pred_h200x<N>); CASES: a cases file
#   (calibration/validation/h200x4/cases.txt, h200x8/cases.txt); PROFILE_N: the N-GPU profile (from
#   run_calibration_hgx.sh); without it only the two-GPU predictions are made (re-predict later without a GPU:
#   calibration/scripts/repredict.sh TRACES PROFILE OUT build/cli/twinstep hgx-h200).
# Expected time: build ~3 min (fresh machine), GPU tests <= 150 s, ~10 s per case.
# Every mpirun reads /dev/null (it would otherwise eat the case list on stdin).
set -u
OUT=$1
N=$2
CASES=$3
PROFILEN=${4:-}
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $B, $T, results_in
results_in "$OUT" traces pred_h200x2 "pred_h200x$N"
CLUSTER=hgx-h200
echo "== build $(date +%T) rev ${REV:-unknown}"
build_gpu "$R/build.log" twinstep backend_tests || exit 1
gpu_info "$R" topo
echo "== GPU tests $(date +%T)"
# The multi-rank backend tests need exactly two ranks (tests/backend/backend_test.cpp skips them otherwise): -np 2
# (GPUs 0 and 1 of the node).
timeout 150 $MPI -np 2 $B/tests/backend/backend_tests --order decl -d yes > "$R/gpu_tests.log" 2>&1 < /dev/null
echo "backend_tests under mpirun -np 2: exit $?"; grep -E "passed|failed|FAILED|test cases" "$R/gpu_tests.log" | tail -8
echo "== validation $(date +%T)"
grep -v '^#' "$CASES" | while IFS='|' read -r name gpus flags; do
  name=$(echo $name); gpus=$(echo $gpus)
  model="--model calibration/validation/models/llama3-8b-4l.json"; case "$flags" in *--model*) model="";; esac
  # shellcheck disable=SC2086
  $T lower $model --gpus $gpus $flags --gpu-memory-gib 141 -o "$R/s.json" > "$R/traces/$name.lower.log" 2>&1 \
    < /dev/null || { echo "$name: lower failed: $(tail -1 "$R/traces/$name.lower.log")"; continue; }
  timeout 75 $MPI -np $gpus $T run "$R/s.json" -o "$R/traces/$name.trace.json" --warmup 2 --steps 5 \
    --timeout-s 30 > "$R/traces/$name.run.log" 2>&1 < /dev/null
  echo "$name: exit $? $(tail -1 "$R/traces/$name.run.log")"
  for p in h200x2 "h200x$N"; do
    prof=calibration/profiles/h200x2.json; [ "$p" = "h200x$N" ] && prof=$PROFILEN
    [ -n "$prof" ] || continue
    ln -sf "../traces/$name.trace.json" "$R/pred_$p/$name.trace.json"
    $T simulate "$R/s.json" --cluster $CLUSTER --gpus $gpus --profile "$prof" --fidelity analytic \
      -o "$R/pred_$p/$name.pred.json" > "$R/pred_$p/$name.pred.log" 2>&1 < /dev/null \
      || echo "$name: simulate ($p) failed"
  done
done
echo "== accuracy with the two-GPU profile $(date +%T)"
python3 calibration/scripts/validation_table.py "$R/pred_h200x2" 2>&1 | tee "$R/table_h200x2.md"
if [ -n "$PROFILEN" ]; then
  echo "== accuracy with the $N-GPU profile $(date +%T)"
  python3 calibration/scripts/validation_table.py "$R/pred_h200x$N" 2>&1 | tee "$R/table_h200x$N.md"
fi
echo "== done $(date +%T)"
