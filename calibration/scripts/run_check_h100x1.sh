#!/usr/bin/env bash
# On one GPU (nvidia-h100-x1 or nvidia-h200): (1) the backend's GPU tests (backend_tests, one process; the two-rank
# backend_tests_mpi2 needs two GPUs), (2) the README's main build (made on the Debian 12 development machine, SimGrid
# and the backend built in) copied here with SimGrid's runtime libraries (.devcarry/carry.tar.xz: twinstep, lib/,
# s1.json one-GPU and s2.json two-rank schedules), run under mpirun: which library MPI_Init binds to, a one-rank run
# to completion, and a two-rank start (issue 20 item 1). Writes logs under $OUT.
set -uo pipefail
source calibration/scripts/device_env.sh
nvidia-smi -L | tee "$OUT/gpu.txt"
REV=${REV:-unknown} build_gpu "$OUT/build.log" backend_tests backend_plan_tests twinstep || exit 1
(cd build-gpu && NCCL_NVLS_ENABLE=0 ctest -L gpu -E mpi2 --output-on-failure -j1) > "$OUT/backend_tests.log" 2>&1
echo "backend_tests rc=$?"; grep -E "tests passed|Failed|Passed" "$OUT/backend_tests.log" | tail -15
D=/tmp/carry; rm -rf $D; mkdir -p $D && tar xJf .devcarry/carry.tar.xz -C $D || exit 1
T=$D/twinstep
{
  echo "== ldd (carried README build)"; LD_LIBRARY_PATH=$D/lib:$LD_LIBRARY_PATH ldd $T | grep -E "not found|mpi|simgrid|nccl|cudart"
  echo "== info"; LD_LIBRARY_PATH=$D/lib:$LD_LIBRARY_PATH $T info
  echo "== mpirun -np 1 run (one GPU schedule)"
  $MPI -x LD_LIBRARY_PATH=$D/lib:$LD_LIBRARY_PATH -np 1 $T run $D/s1.json -o "$OUT/m1.json" --warmup 1 --steps 3
  echo "rc=$?"
  echo "== mpirun -np 2 run (two-rank schedule on one GPU: NCCL is expected to refuse two ranks on one device)"
  timeout 180 $MPI -x LD_LIBRARY_PATH=$D/lib:$LD_LIBRARY_PATH -np 2 $T run $D/s2.json -o "$OUT/m2.json" --warmup 1 --steps 2
  echo "rc=$?"
  echo "== the same one-GPU run with the device build (SimGrid off)"
  $MPI -np 1 build-gpu/cli/twinstep run $D/s1.json -o "$OUT/m1_gpu_build.json" --warmup 1 --steps 3
  echo "rc=$?"
} > "$OUT/readme_build_run.log" 2>&1
cat "$OUT/readme_build_run.log" | grep -v "^\s*$" | tail -40
