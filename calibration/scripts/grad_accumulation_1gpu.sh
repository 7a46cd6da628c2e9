#!/usr/bin/env bash
# gradient_accumulation_fusion on and off on one GPU (issue 17): the backend runs each lowered step (Llama-3-8B with 4
# layers, Qwen3-30B-A3B with 2; seq 4096, MBS 1, 4 micro-batches so the main grads accumulate), fused (accumulating
# wgrad GEMMs with fp32 main grads, plain ones with bf16) and unfused (a plain wgrad GEMM and its main_grad.add_), and
# the simulator predicts the same schedules with the H100 profile; the check is the sign and size of the unfused cost
# (docs/calibration.md, "Without the fusion").
# Usage, from the repository root: calibration/scripts/grad_accumulation_1gpu.sh OUT
#   Results: OUT/results.tgz (r/<case>/{step.json,pred.txt,pred.json,backend.json,backend.log,compare.txt}) and
#   OUT/summary.txt (one line per case: predicted and measured step).
set -u
OUT=$1
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, build_gpu, $T, revision
results_in "$OUT"
REV=$(revision)
echo "== build $(date +%T) revision $REV"
REV=$REV build_gpu "$R/build.log" twinstep || exit 1
gpu_info "$R"
fewer_layer_models "$R/models" calibration/scripts/grad_accumulation_1gpu.sh
PROF=calibration/profiles/h100x1.json
# run_case NAME MODEL GRADS(fp32|bf16) FUSION(on|off)
run_case() {
  local name=$1 model=$2 grads=$3 fusion=$4
  local D=$R/$name
  mkdir -p "$D"
  echo "== $name $(date +%T)"
  local flags=(--model "$R/models/$model.json" --gpus 1 --mbs 1 --gbs 4 --seq 4096 --profile "$PROF")
  [ "$grads" = fp32 ] && flags+=(--grad-reduce-in-fp32) || flags+=(--no-grad-reduce-in-fp32)
  [ "$fusion" = on ] && flags+=(--gradient-accumulation-fusion) || flags+=(--no-gradient-accumulation-fusion)
  $T lower "${flags[@]}" -o "$D/step.json" > "$D/lower.txt" 2>&1 || { tail -3 "$D/lower.txt"; return; }
  $T simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile "$PROF" -o "$D/pred.json" > "$D/pred.txt" 2>&1
  # shellcheck disable=SC2086  # $MPI is a command line
  timeout 240 $MPI -np 1 $T run "$D/step.json" -o "$D/backend.json" --warmup 2 --steps 5 \
    > "$D/backend.log" 2>&1 < /dev/null
  echo "backend exit $?" >> "$D/backend.log"
  [ -s "$D/backend.json" ] && $T compare "$D/pred.json" "$D/backend.json" > "$D/compare.txt" 2>&1
  # compare's "  step  PREDICTED  MEASURED  ERROR  REL" row
  echo "$name: predicted $(grep -m1 '^step time' "$D/pred.txt") | $(grep -m1 -E '^ +step +[0-9]' "$D/compare.txt" \
    2>/dev/null | tr -s ' ')" | tee -a "$OUT/summary.txt"
}
for grads in fp32 bf16; do
  for fusion in on off; do run_case "dense_${grads}_${fusion}" llama3-8b-4l "$grads" "$fusion"; done
done
for fusion in on off; do run_case "moe_fp32_${fusion}" qwen3-30b-a3b-2l fp32 "$fusion"; done
echo "== done $(date +%T)"
