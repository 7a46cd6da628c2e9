#!/usr/bin/env bash
# One-H200 session (device kind nvidia-h200): builds the backend and the CLI, runs the GPU tests in one process
# (two-rank tests skip), then, REPS times in this one call with the GPU clocks sampled alongside (nvidia-smi, read
# only): the GEMM sweep through the backend and torch.matmul (order alternating between repetitions) and the
# issue-overhead bench; a cuBLASLt log of both sides' algorithm choice for three shapes; and `twinstep calibrate
# --suite default` on one GPU (GEMM, grouped-GEMM expert shapes, attention with the causal block plan, memory,
# host costs; no collectives). Everything lands in OUT/r and is packed into OUT/results.tgz.
# Usage, from the repository root: calibration/scripts/run_h200x1.sh OUT [REPS] [all|bench]
# (bench: only the GEMM and issue-overhead repetitions). The GEMM windows are long (1 s of the shape before, 10
# measured steps of 20): under the 700 W cap the SM clock swings between about 1.35 and 1.98 GHz, and windows of a
# few ms (the first protocol) sampled that swing, not the code (see calibration/measured/h200x2/gemm.md).
set -u
OUT=$1
REPS=${2:-3}
MODE=${3:-all}
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $B, results_in
results_in "$OUT"
REV=$(revision)
echo "== build $(date +%T) revision $REV"
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,TEMPERATURE > "$R/nvidia-smi-q.txt" 2>&1
TARGETS="gemm_sweep_bench issue_overhead_bench"
[ "$MODE" = all ] && TARGETS="$TARGETS backend_tests backend_plan_tests twinstep"
# shellcheck disable=SC2086
REV=$REV BENCH=ON build_gpu "$R/build.log" $TARGETS || exit 1

if [ "$MODE" = all ]; then
echo "== tests $(date +%T)"
timeout 60 $B/tests/backend/backend_plan_tests > "$R/backend_plan_tests.log" 2>&1; echo "backend_plan_tests exit $?"
timeout 240 $B/tests/backend/backend_tests --order decl > "$R/backend_tests.log" 2>&1
echo "backend_tests exit $?"; grep -E "passed|failed|causal|relative error" "$R/backend_tests.log" | tail -12
fi

nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active \
  --format=csv -lms 100 > "$R/clocks.csv" 2>&1 &
SAMPLER=$!
G="-n 20 --steps 10 --warmup-ms 1000"
for rep in $(seq 1 "$REPS"); do
  echo "== repetition $rep $(date +%T)"
  echo "rep $rep start $(date +%H:%M:%S.%N)" >> "$R/marks.txt"
  backend() { timeout 120 $B/bench/backend/gemm_sweep_bench $G -o "$R/gemm_backend.$rep.json" > "$R/gemm_backend.$rep.log" 2>&1; }
  torchm() { timeout 120 python3 calibration/scripts/torch_gemm.py $G -o "$R/gemm_torch.$rep.json" > "$R/gemm_torch.$rep.log" 2>&1; }
  if [ $((rep % 2)) -eq 1 ]; then backend; torchm; else torchm; backend; fi
  echo "rep $rep issue $(date +%H:%M:%S.%N)" >> "$R/marks.txt"
  timeout 120 $B/bench/backend/issue_overhead_bench -n 2000 -r 7 -o "$R/issue.$rep.json" > "$R/issue.$rep.log" 2>&1
  paste "$R/gemm_backend.$rep.log" "$R/gemm_torch.$rep.log" | cut -c1-100
  tail -n 4 "$R/issue.$rep.log"
done
if [ "$MODE" = all ]; then
echo "== cuBLASLt algorithm logs $(date +%T)"
S3="16384x2048x2048 8192x8192x8192 4096x8192x4096"
CUBLASLT_LOG_LEVEL=2 CUBLASLT_LOG_FILE="$R/lt_backend.log" timeout 60 $B/bench/backend/gemm_sweep_bench -n 2 --steps 1 \
  --warmup-ms 0 -s $S3 -o "$R/lt_backend.json" > /dev/null 2>&1
CUBLASLT_LOG_LEVEL=2 CUBLASLT_LOG_FILE="$R/lt_torch.log" timeout 60 python3 calibration/scripts/torch_gemm.py -n 2 \
  --steps 1 --warmup-ms 0 -s $S3 -o "$R/lt_torch.json" > /dev/null 2>&1
wc -l "$R"/lt_*.log
echo "== calibrate (one GPU) $(date +%T)"
timeout 300 $B/cli/twinstep calibrate --suite default -o "$R/profile_h200x1.json" --raw "$R/raw_h200x1.jsonl" \
  --steps 5 --warmup 2 > "$R/calibrate.log" 2>&1 < /dev/null
echo "calibrate exit $?"; grep -E "grouped|attention" "$R/calibrate.log" | tail -8
fi
kill "$SAMPLER" 2>/dev/null
echo "== done $(date +%T)"
