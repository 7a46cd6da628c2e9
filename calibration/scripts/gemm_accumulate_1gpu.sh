#!/usr/bin/env bash
# Accumulating wgrad GEMMs (IR accumulate_fp32, Megatron's gradient_accumulation_fusion) on one GPU: the backend's GPU
# tests of C += A B into an fp32 C (bf16 and fp8), then the calibration group compute.gemm_accumulate measured beside
# a fresh compute.gemm (same session, same clocks): the stored one-GPU raw file minus its compute.gemm group is
# resumed, so only those two groups run. On an H100 the profile is then refitted with the committed command of
# calibration/profiles/README.md (session-6 framework and memory files, comm figures borrowed from h200x2.json).
# Usage, from the repository root: calibration/scripts/gemm_accumulate_1gpu.sh OUT
#   Results: OUT/backend_tests.log (the GPU tests), OUT/G.raw.jsonl (G = h100x1 or h200x1: the raw file with both
#   groups re-measured), OUT/calibrate.log; on an H100 OUT/h100x1.json and OUT/h100x1.fit.log. How to fold them in:
#   calibration/profiles/README.md, "Accumulating GEMMs".
set -u
OUT=$1
mkdir -p "$OUT"
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
  *H100*) G=h100x1 ;; *H200*) G=h200x1 ;; *) G=gpu1 ;;
esac
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, accumulate_gpu_tests, $T
accumulate_gpu_tests "$OUT" || exit 1  # build, then the backend's accumulating-GEMM GPU tests
echo "== calibrate compute.gemm + compute.gemm_accumulate $(date +%T)"
RAW=calibration/profiles/$G.raw.jsonl
[ -f "$RAW" ] || RAW=calibration/profiles/h200x1.raw.jsonl
grep -v '"group":"compute.gemm",' "$RAW" > "$OUT/$G.raw.jsonl"
timeout 300 "$T" calibrate --suite default --resume -o "$OUT/$G.accumulate.json" \
  --raw "$OUT/$G.raw.jsonl" --steps 5 --warmup 2 > "$OUT/calibrate.log" 2>&1 < /dev/null
echo "calibrate exit $?"; grep -i "gemm" "$OUT/calibrate.log" | tail -8
if [ "$G" = h100x1 ]; then
  S6=calibration/measured/h100x1/session6
  "$T" calibrate --fit "$OUT/h100x1.raw.jsonl" --cluster dgx-h100 \
    --framework "$S6/h100x1.torch_framework.json" --memory "$S6/h100x1.memory.json" \
    --borrow calibration/profiles/h200x2.json \
    --name "one H100 SXM5 80GB, suite default; collectives and co-runs from two H200 (NV18)" \
    -o "$OUT/h100x1.json" 2> "$OUT/h100x1.fit.log"
  echo "fit exit $?"; grep -E "gemm" "$OUT/h100x1.fit.log" | head -6
fi
echo "== done $(date +%T)"
