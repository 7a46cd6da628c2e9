# Sourced by the scripts that run on the GPU machines: NVLink multicast off (NCCL, torch symmetric memory, NVSHMEM),
# Open MPI as root, the same NCCL and cuBLAS builds as torch (torch's wheels first on the library path, so the
# backend and torch.distributed / torch.matmul compare like for like), and $MPI: mpirun forwarding all of it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
TORCH_NCCL=$(dirname "$(find /opt /usr/local/lib /usr/lib/python3* -name 'libnccl.so.2' -path '*nvidia*' 2>/dev/null | head -1)")
TORCH_CUBLAS=$(dirname "$TORCH_NCCL")/../cublas/lib
export LD_LIBRARY_PATH=$TORCH_NCCL:$TORCH_CUBLAS:${LD_LIBRARY_PATH:-}
# build_gpu LOG TARGET...: configures build-gpu (backend on, SimGrid off, Release, sm_90; the revision REV if set;
# the benchmarks, bench/ and bench/backend/, with BENCH=ON; cuDNN's fused attention as CUDNN says, AUTO unless set:
# CUDNN=OFF runs the GEMM+softmax attention, as every trace and profile measured before 8bf1414 did) and builds the
# targets, logging to LOG; on failure prints the errors and returns 1.
build_gpu() {
  local log=$1
  shift
  cmake -S . -B build-gpu -G Ninja -DTWINSTEP_SIMGRID=OFF -DTWINSTEP_BACKEND=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DCMAKE_BUILD_TYPE=Release -DTWINSTEP_ENABLE_BENCH=${BENCH:-OFF} -DTWINSTEP_CUDNN=${CUDNN:-AUTO} ${REV:+-DTWINSTEP_GIT_REVISION="$REV"} > "$log" 2>&1 \
    || { tail -30 "$log"; return 1; }
  ninja -C build-gpu "$@" >> "$log" 2>&1 || { grep -E "error|FAILED" "$log" | head -30; return 1; }
}
MPI="mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST
     -x NVSHMEM_DISABLE_NVLS -x LD_LIBRARY_PATH -x PYTHONUNBUFFERED"
# The device build (build_gpu's folder) and its CLI.
B=build-gpu
T=$B/cli/twinstep
# results_in DIR [SUB...]: R=DIR/r, created with its SUB folders; at exit R is packed into DIR/results.tgz
# (pack_results: one file back, the device tool returns a limited number of files).
results_in() {
  RESULTS_DIR=$1
  R=$RESULTS_DIR/r
  mkdir -p "$R"
  local sub
  for sub in "${@:2}"; do mkdir -p "$R/$sub"; done
  trap pack_results EXIT
}
pack_results() { tar czf "$RESULTS_DIR/results.tgz" -C "$RESULTS_DIR" r; }
# gpu_info DIR [topo]: the GPUs' names, driver and SM clocks in DIR/nvidia-smi.csv; with topo also the interconnect
# matrix in DIR/nvidia-smi-topo.txt.
gpu_info() {
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$1/nvidia-smi.csv" 2>&1
  [ "${2:-}" != topo ] || nvidia-smi topo -m > "$1/nvidia-smi-topo.txt" 2>&1
}
# revision: the revision of this tree: the REVISION file it was copied with, else git's, else "unknown".
revision() { cat REVISION 2>/dev/null || git rev-parse --short=12 HEAD 2>/dev/null || echo unknown; }
# fewer_layer_models DIR SCRIPT: the zoo's llama3-8b with 4 layers and qwen3-30b-a3b with 2 (every layer's shapes the
# zoo's) as DIR/<zoo>-<layers>l.json, their `source` naming SCRIPT (calibration/reference/memory_validation.py's).
fewer_layer_models() {
  mkdir -p "$1"
  python3 -c 'import sys; sys.path.insert(0, "calibration/reference")
from memory_validation import fewer_layer_models
fewer_layer_models(sys.argv[1], sys.argv[2])' "$1" "$2"
}
# accumulate_gpu_tests DIR: builds the CLI and backend_tests at this tree's revision (log DIR/build.log), then runs the
# backend's accumulating-GEMM GPU tests ("*accumulat*": C += A B into an fp32 and into a bf16 C) into
# DIR/backend_tests.log and prints their exit status and summary; returns 1 when the build fails.
accumulate_gpu_tests() {
  local rev
  rev=$(revision)
  echo "== build $(date +%T) revision $rev"
  REV=$rev build_gpu "$1/build.log" twinstep backend_tests || return 1
  echo "== GPU tests $(date +%T)"
  timeout 120 "$B"/tests/backend/backend_tests "*accumulat*" > "$1/backend_tests.log" 2>&1
  echo "backend_tests exit $?"; tail -3 "$1/backend_tests.log"
}
