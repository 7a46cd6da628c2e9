#!/usr/bin/env bash
# One-H200 session (device kind nvidia-h200) for the SM clock under the power cap (issue 7/9): builds the backend
# (whose traces carry the GPU monitor's gpu_monitor* context keys), runs the monitor's tests, then, with nvidia-smi
# sampling every 20 ms as a cross-check (read only, clocks untouched): the validation case gpu1.base, the calibration
# suite's compute groups (RAW: a raw file without its compute.* lines, so --resume measures only those), a schedule
# of gpu1.base's GEMMs alone back to back, gpu1.base again; then the schedule simulated with the fresh profile.
# Usage, from the repository root: calibration/scripts/clocks_h200x1.sh OUT RAW
set -u
OUT=$1
RAW=$2
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $B, $T, results_in
results_in "$OUT"
trap 'pack_results && rm -rf "$R"' EXIT
REV=$(revision)
mark() { echo "$(date +'%Y/%m/%d %H:%M:%S.%3N') $1" >> "$R/marks.txt"; }
echo "== build $(date +%T)"
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE > "$R/nvidia-smi-q.txt" 2>&1
REV=$REV build_gpu "$R/build.log" twinstep backend_tests backend_plan_tests || exit 1
echo "== tests $(date +%T)"
timeout 60 $B/tests/backend/backend_plan_tests > "$R/backend_plan_tests.log" 2>&1; echo "backend_plan_tests exit $?"
timeout 60 $B/tests/backend/backend_tests "backend::execute: the GPU monitor*" -s > "$R/backend_tests_monitor.log" 2>&1
echo "backend_tests (monitor) exit $?"; tail -3 "$R/backend_tests_monitor.log"

M=calibration/validation/models/llama3-8b-4l.json
$T lower --model $M --gpus 1 --mbs 1 --gbs 2 --seq 4096 --no-distributed-optimizer -o "$R/s.json" > "$R/lower.log" 2>&1 || cat "$R/lower.log"
python3 calibration/scripts/gemm_only_schedule.py "$R/s.json" "$R/g.json"
cp "$RAW" "$R/raw.jsonl"

nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv,noheader -lms 20 \
  > "$R/clocks.csv" 2>&1 &
SAMPLER=$!
sleep 1
run() {  # name schedule
  mark "$1.start"
  timeout 60 $T run "$2" -o "$R/$1.trace.json" --warmup 2 --steps 5 > "$R/$1.log" 2>&1; echo "$1 exit $?"
  mark "$1.end"
  sleep 1
}
run run1 "$R/s.json"
mark cal.start
timeout 120 $T calibrate --suite default -o "$R/p.json" --raw "$R/raw.jsonl" --resume --steps 5 --warmup 2 \
  > "$R/cal.log" 2>&1 < /dev/null
echo "calibrate exit $?"
mark cal.end
sleep 1
run gemms "$R/g.json"
run run2 "$R/s.json"
kill "$SAMPLER" 2>/dev/null
for f in run1 gemms run2; do
  python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['context']; print(sys.argv[2], {k: v for k, v in c.items() if k.startswith('gpu_monitor')})" "$R/$f.trace.json" $f
done
grep -o '"group":"[a-z_.]*"\|"gpu_monitor":{[^}]*}' "$R/raw.jsonl" | head -20
$T simulate "$R/s.json" --cluster h200x2-nvlink --gpus 1 --fidelity analytic --profile "$R/p.json" -o "$R/pred.json" \
  > "$R/pred.log" 2>&1 || echo "simulate failed"
$T simulate "$R/g.json" --cluster h200x2-nvlink --gpus 1 --fidelity analytic --profile "$R/p.json" \
  -o "$R/gemms.pred.json" > "$R/gemms.pred.log" 2>&1 || echo "simulate (gemms) failed"
echo "== done $(date +%T)"
