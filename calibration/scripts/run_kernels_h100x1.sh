#!/usr/bin/env bash
# On one H100 (nvidia-h100-x1), issue 17 items 1, 2 and 4: the GPU tests of cuDNN's fused attention and of the FP8
# GEMMs, then the side-by-side benchmarks: attention forward + backward through the backend (bench/backend/
# attention_bench) against torch.nn.functional.scaled_dot_product_attention (torch_attention.py: default, cuDNN
# and flash backends), Llama-3-8B heads (32 query, 8 kv, d 128), causal, seq 1k-32k; FP8 GEMMs through the backend
# (gemm_sweep_bench --dtype fp8, e4m3 forward and e5m2 x e4m3 gradient) against torch._scaled_mm (torch_gemm.py
# --dtype fp8), with bf16 on both sides for reference. Writes under OUT ($1, default $OUT): gpu_tests.log, the
# side-by-side table (kernels_table.py) kernels.md, and the benchmarks' JSON in raw.tar.gz (the device tool returns
# at most 8 files). QUICK=1: fewer steps, sequence lengths and shapes (a smoke run).
set -uo pipefail
OUT=${1:-$OUT}
source calibration/scripts/device_env.sh
nvidia-smi -L | tee "$OUT/gpu.txt"
BENCH=ON REV=${REV:-unknown} build_gpu "$OUT/build.log" backend_tests attention_bench gemm_sweep_bench || exit 1
grep -E "cuDNN fused attention" build-gpu/CMakeCache.txt "$OUT/build.log" | head -2
(cd build-gpu && ctest -L gpu -R "sdpa|Fp8|fp8|attention" --output-on-failure -j1) > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; grep -E "tests passed|Failed|Passed|relative error|TFLOP" "$OUT/gpu_tests.log" | head -30
R=$OUT/raw; mkdir -p "$R"
SEQ="1024 2048 4096 8192 16384 32768"; STEPS=10; WARM=1000; SHAPES="4096x4096x4096 8192x8192x8192 4096x14336x4096 4096x4096x14336 16384x8192x1024"
if [ "${QUICK:-0}" = 1 ]; then SEQ="1024 4096 16384"; STEPS=5; WARM=300; SHAPES="8192x8192x8192 4096x14336x4096"; fi
build-gpu/bench/backend/attention_bench --seq $SEQ --steps $STEPS --warmup-ms $WARM -o "$R/attention_backend.json"
python3 calibration/scripts/torch_attention.py --seq $SEQ --steps $STEPS --warmup-ms $WARM -o "$R/attention_torch.json"
for fmt in e4m3 e5m2; do
  build-gpu/bench/backend/gemm_sweep_bench --dtype fp8 --a-format $fmt -s $SHAPES --steps $STEPS --warmup-ms $WARM \
    -o "$R/gemm_fp8_${fmt}_backend.json"
  python3 calibration/scripts/torch_gemm.py --dtype fp8 --a-format $fmt -s $SHAPES --steps $STEPS --warmup-ms $WARM \
    -o "$R/gemm_fp8_${fmt}_torch.json"
done
build-gpu/bench/backend/gemm_sweep_bench -s $SHAPES --steps $STEPS --warmup-ms $WARM -o "$R/gemm_bf16_backend.json"
python3 calibration/scripts/torch_gemm.py -s $SHAPES --steps $STEPS --warmup-ms $WARM -o "$R/gemm_bf16_torch.json"
python3 calibration/scripts/kernels_table.py "$R" > "$OUT/kernels.md"; cat "$OUT/kernels.md"
tar czf "$OUT/raw.tar.gz" -C "$OUT" raw && rm -rf "$R"
