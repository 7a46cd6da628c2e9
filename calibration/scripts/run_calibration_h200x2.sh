#!/usr/bin/env bash
# On the two-H200 machine, from the repository root: builds twinstep with the backend, runs the calibration suite
# (raw measurements + fitted profile), the PyTorch host-overhead script and the validation cases, and packs the
# results into OUT/results.tgz. Usage: calibration/scripts/run_calibration_h200x2.sh OUT [default|quick|none]
# (none: validation runs only). Every mpirun reads /dev/null: it would otherwise eat the case list on stdin.
set -u
OUT=$1
SUITE=${2:-default}
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $T, results_in
results_in "$OUT" traces
echo "== build $(date +%T)"
build_gpu "$OUT/r/build.log" twinstep || exit 1
gpu_info "$OUT/r"
if [ "$SUITE" != none ]; then
echo "== calibrate $(date +%T)"
timeout 280 $MPI -np 2 $T calibrate --suite "$SUITE" -o "$OUT/r/profile.json" --raw "$OUT/r/raw.jsonl" \
  --steps 5 --warmup 2 2>&1 < /dev/null | tee "$OUT/r/calibrate.log" | tail -40
echo "== torch host overhead $(date +%T)"
timeout 60 python3 calibration/scripts/torch_host_overhead.py -o "$OUT/r/framework.json" 2>&1 < /dev/null | tail -3
fi
echo "== validation $(date +%T)"
grep -v '^#' calibration/validation/h200x2/cases.txt | while IFS='|' read -r name gpus flags; do
  name=$(echo $name); gpus=$(echo $gpus)
  model="--model calibration/validation/models/llama3-8b-4l.json"; case "$flags" in *--model*) model="";; esac
  $T lower $model --gpus $gpus $flags -o "$OUT/r/s.json" \
    > "$OUT/r/traces/$name.lower.log" 2>&1 < /dev/null || { echo "$name: lower failed"; tail -2 "$OUT/r/traces/$name.lower.log"; continue; }
  timeout 90 $MPI -np $gpus $T run "$OUT/r/s.json" -o "$OUT/r/traces/$name.trace.json" --warmup 2 --steps 5 \
    --timeout-s 60 > "$OUT/r/traces/$name.run.log" 2>&1 < /dev/null
  echo "$name: exit $? $(tail -1 "$OUT/r/traces/$name.run.log")"
done
echo "== done $(date +%T)"
