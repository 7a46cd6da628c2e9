#!/usr/bin/env bash
# One-GPU calibration (device kind nvidia-h100-x1, or nvidia-h200: the files are named after the GPU found): builds the CLI with the backend, runs `twinstep calibrate
# --suite default` on one GPU (GEMM, grouped-GEMM expert shapes, attention, memory, host costs; no collectives: one
# GPU has no peer) and PyTorch's host-overhead microbenchmark (torch_host_overhead.py, the profile's framework group).
# The profile is then fitted on any machine: calibration/profiles/README.md. Results land in OUT.
# Usage, from the repository root: calibration/scripts/run_calibration_1gpu.sh OUT
set -u
OUT=$1
mkdir -p "$OUT"
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
  *H100*) G=h100x1 ;; *H200*) G=h200x1 ;; *) G=gpu1 ;;
esac
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, revision
REV=$(revision)
echo "== build $(date +%T) revision $REV"
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,TEMPERATURE,MEMORY > "$OUT/nvidia-smi-q.txt" 2>&1
REV=$REV build_gpu "$OUT/build.log" twinstep || exit 1
echo "== framework host costs $(date +%T)"
timeout 120 python3 calibration/scripts/torch_host_overhead.py -o "$OUT/$G.framework.json" > "$OUT/framework.log" 2>&1
echo "torch_host_overhead exit $?"
echo "== calibrate (one GPU) $(date +%T)"
timeout 330 build-gpu/cli/twinstep calibrate --suite default -o "$OUT/$G.device.json" \
  --raw "$OUT/$G.raw.jsonl" --steps 5 --warmup 2 > "$OUT/calibrate.log" 2>&1 < /dev/null
echo "calibrate exit $?"; tail -5 "$OUT/calibrate.log"
echo "== done $(date +%T)"
