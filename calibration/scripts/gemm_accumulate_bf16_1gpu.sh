#!/usr/bin/env bash
# Accumulating wgrad GEMMs into a bf16 C (IR `accumulate`: gradient_accumulation_fusion with bf16 main grads) on one
# GPU, issue 17/21 item 4: the backend's accumulate GPU tests (fp32 and bf16 C), then compute.gemm and
# compute.gemm_accumulate re-measured in one session (the latter now holds each shape twice: fp32 C, family
# gemm_accumulate, and bf16 C, family gemm_accumulate_bf16). Every other group of the committed raw file is kept.
# The refit runs on the host afterwards, with the command of calibration/measured/h100x1/session11/README.md
# ("Profile refit"), on OUT/G.raw.jsonl: it writes the gemm_accumulate_bf16 table.
# Usage, from the repository root: calibration/scripts/gemm_accumulate_bf16_1gpu.sh OUT
#   Results: OUT/backend_tests.log, OUT/G.raw.jsonl (G = h100x1 or h200x1), OUT/G.device.json (the device's fit),
#   OUT/calibrate.log, OUT/build.log.
set -u
OUT=$1
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, accumulate_gpu_tests, $T
accumulate_gpu_tests "$OUT" || exit 1  # build, then the backend's accumulating-GEMM GPU tests
bash "$(dirname "$0")/remeasure_groups_1gpu.sh" "$OUT" compute.gemm compute.gemm_accumulate
echo "== done $(date +%T)"
