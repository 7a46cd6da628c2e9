#!/usr/bin/env bash
# On one H100 (issue 17 item 4, the FP8 GEMM bar): which cuBLASLt algorithm the backend's fp8 GEMM and torch._scaled_mm
# each run for the shapes of kernels.md, e4m3 x e4m3 (forward) and e5m2 x e4m3 (gradient), with cuBLASLt's API trace
# (CUBLASLT_LOG_LEVEL=5) around a short run of each (gemm_sweep_bench --dtype fp8 and torch_gemm.py --dtype fp8).
# Usage, from the repository root: calibration/scripts/fp8_algo_h100x1.sh OUT
# Writes OUT/fp8_algo.txt (per side and format: the distinct cublasLtMatmul descriptors, algorithms and times) and
# OUT/fp8_algo_logs.tgz (the raw traces and the benches' JSON).
set -uo pipefail
OUT=$1
mkdir -p "$OUT/logs"
source calibration/scripts/device_env.sh
BENCH=ON REV=$(revision) build_gpu "$OUT/logs/build.log" gemm_sweep_bench || exit 1
SHAPES=${SHAPES:-"4096x4096x14336 4096x14336x4096"}
for fmt in e4m3 e5m2; do
  # shellcheck disable=SC2086  # SHAPES is a list
  CUBLASLT_LOG_LEVEL=5 CUBLASLT_LOG_FILE="$OUT/logs/backend_$fmt.%i.log" build-gpu/bench/backend/gemm_sweep_bench \
    --dtype fp8 --a-format $fmt -s $SHAPES --steps 5 --warmup-ms 20 -o "$OUT/logs/backend_$fmt.json" \
    > "$OUT/logs/backend_$fmt.out" 2>&1
  # shellcheck disable=SC2086
  CUBLASLT_LOG_LEVEL=5 CUBLASLT_LOG_FILE="$OUT/logs/torch_$fmt.%i.log" python3 calibration/scripts/torch_gemm.py \
    --dtype fp8 --a-format $fmt -s $SHAPES --steps 5 --warmup-ms 20 -o "$OUT/logs/torch_$fmt.json" \
    > "$OUT/logs/torch_$fmt.out" 2>&1
done
{
  for f in "$OUT"/logs/*.out; do echo "== $(basename "$f")"; tail -8 "$f"; done
  for f in "$OUT"/logs/*.log; do
    [ "$(basename "$f")" = build.log ] && continue
    echo "== $(basename "$f"): distinct cublasLtMatmul / heuristic lines (pointers removed), with counts"
    grep -E "cublasLtMatmul|Algo|algo|heuristic" "$f" | sed -E 's/0[xX][0-9a-fA-F]{6,}/PTR/g; s/^\[[^]]*\]//' | sort | uniq -c \
      | sort -rn | head -25
  done
} > "$OUT/fp8_algo.txt" 2>&1
tar czf "$OUT/fp8_algo_logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
cat "$OUT/fp8_algo.txt" | cut -c1-400 | head -120
