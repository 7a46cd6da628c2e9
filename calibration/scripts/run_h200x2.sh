#!/usr/bin/env bash
# Builds the backend on the two-H200 machine, runs its GPU tests under mpirun -np 2, then the side-by-side
# measurements (backend vs torch on the same NCCL: torch's libnccl is put first on LD_LIBRARY_PATH) and the tables.
# Usage, from the repository root on the GPU machine: calibration/scripts/run_h200x2.sh OUT_DIR [quick|full]
set -u
OUT=$1
MODE=${2:-full}
mkdir -p "$OUT/raw" "$OUT/tables"
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI
MPI="$MPI -np 2"
echo "== torch NCCL dir: $TORCH_NCCL"

echo "== build"
BENCH=ON build_gpu "$OUT/build.log" backend_tests coll_sweep_bench gemm_sweep_bench issue_overhead_bench || exit 1
ninja -C build-gpu twinstep > "$OUT/build_cli.log" 2>&1 && echo "twinstep CLI built" || echo "twinstep CLI failed to build"

echo "== tests: $MPI build-gpu/tests/backend/backend_tests --order decl"
timeout 240 $MPI sh -c 'build-gpu/tests/backend/backend_tests --order decl > '"$OUT"'/tests.rank$OMPI_COMM_WORLD_RANK.log 2>&1'
echo "mpirun exit: $?"
tail -n 4 "$OUT/tests.rank0.log" "$OUT/tests.rank1.log"
if [ "$MODE" = full ]; then
  echo "== ctest -L gpu (one process per test case, then backend_tests_mpi2)"
  (cd build-gpu && timeout 300 ctest -L gpu --output-on-failure > "$OUT/ctest.log" 2>&1; echo "ctest exit: $?")
  tail -15 "$OUT/ctest.log"
fi

if [ "$MODE" = quick ]; then
  CB="-b 1048576 -e 67108864 -f 8 -n 10"; GN="-n 5"; IN="-n 500 -r 3"
else
  CB="-b 8192 -e 1073741824 -f 2 -n 50"; GN="-n 20"; IN="-n 2000 -r 7"
fi
echo "== collectives: backend"
timeout 300 $MPI build-gpu/bench/backend/coll_sweep_bench $CB -o "$OUT/raw/coll_sweep.json"
echo "== collectives: torch"
timeout 300 $MPI python3 calibration/scripts/torch_collectives.py $CB -o "$OUT/raw/torch_coll.json"
echo "== gemm: backend, torch"
timeout 120 build-gpu/bench/backend/gemm_sweep_bench $GN -o "$OUT/raw/gemm_sweep.json"
timeout 120 python3 calibration/scripts/torch_gemm.py $GN -o "$OUT/raw/torch_gemm.json"
echo "== gemm: backend with the system cuBLAS (/usr/local/cuda), for reference"
LD_LIBRARY_PATH=${LD_LIBRARY_PATH#*:*:} timeout 120 build-gpu/bench/backend/gemm_sweep_bench $GN \
  -o "$OUT/raw/gemm_sweep_system_cublas.json"
echo "== issue overhead"
timeout 120 build-gpu/bench/backend/issue_overhead_bench $IN -o "$OUT/raw/issue_overhead.json"
python3 calibration/scripts/make_tables.py "$OUT/raw" "$OUT/tables" \
  "calibration/scripts/run_h200x2.sh OUT $MODE (coll: $CB; gemm: $GN; issue: $IN)"
cat "$OUT"/tables/*.md | grep -E "Worst|target|^\| (all_reduce|all_to_all) \| (1048576|67108864|1073741824)"

if [ -x build-gpu/cli/twinstep ]; then
  echo "== twinstep run on a lowered schedule"
  build-gpu/cli/twinstep lower --model llama3-8b --gpus 2 --tp 2 --no-sp --no-distributed-optimizer --mbs 1 --gbs 2 --seq 2048 -o "$OUT/raw/llama3-8b.tp2.json" > "$OUT/raw/lower.log" 2>&1 && \
  timeout 180 $MPI build-gpu/cli/twinstep run "$OUT/raw/llama3-8b.tp2.json" -o "$OUT/raw/llama3-8b.tp2.trace.json" \
      --warmup 1 --steps 3 --timeout-s 60 > "$OUT/raw/run.log" 2>&1
  echo "twinstep run exit: $?"; tail -n 5 "$OUT/raw/lower.log" "$OUT/raw/run.log"
fi
tar czf "$OUT/results.tgz" -C "$OUT" raw tables
