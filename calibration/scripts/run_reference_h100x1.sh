#!/usr/bin/env bash
# One H100 (device kind nvidia-h100-x1; runs on nvidia-h200 too): the PyTorch reference of issue 17 item 6 side by
# side with the backend and the prediction. Per case: `twinstep lower` (one GPU, MBS 1) writes the schedule; the
# backend runs it (`mpirun -np 1 build-gpu/cli/twinstep run`; with a profile, the schedule lowered with the profile,
# whose host ops replay the measured framework host costs); calibration/reference/torch_reference.py trains the
# same shapes in eager PyTorch (bf16, SDPA) and writes a profiler (Kineto) trace of one step; `twinstep simulate`
# predicts it with datasheet defaults and, when a profile is at hand, with the profile (schedule lowered with the
# profile's host costs). nvidia-smi samples memory.used and the SM clock during each run. Ends with the side-by-side
# table (calibration/reference/reference_table.py) in OUT/table.md; everything else lands in OUT/r/<case>/. Issue 19:
# each torch trace is imported onto its schedule (import-trace), compared, fitted from (calibrate --from-trace), and
# the fit from dense_s4096 predicts every case.
#
# Usage, from the repository root: calibration/scripts/run_reference_h100x1.sh OUT [WHAT...]
#   WHAT: all (default) | build | calibrate | dense | dense_rc | dense_fp8 | dense_mb | moe | a case name (dense_s2048,
#   dense_s4096_rc, dense_s4096_fp8 (fp8 linear layers, per-tensor current scaling on both sides), moe_s4096, ...). One device call has 10 minutes: the first call of a fresh machine builds (a few minutes), so
#   split, e.g. `OUT build calibrate dense` then `OUT dense_rc moe` (build-gpu and the fitted profile stay on the
#   warm machine between calls; the table of each call covers the cases of that call, reference_table.py joins the
#   OUT folders of several calls afterwards).
# Environment: PROFILE=path uses that profile instead of the one `calibrate` fits here (build-gpu/reference_profile.json);
#   SUITE=quick|default for calibrate (default: quick); STEPS (torch, default 10), BSTEPS (backend, default 5);
#   FIT_BASE=path: the base profile of `calibrate --from-trace` (default: the GPU's measured profile, as predict; "datasheet"; a profile measured on
#   the same GPU); TORCH_FLAGS: more torch_reference.py flags, e.g. --fuse-elementwise (RMSNorm, RoPE, SwiGLU, cross entropy fused
#   by torch.compile, as production stacks run them).
set -u
OUT=$1
shift
WHAT=" ${*:-all} "
R=$OUT/r
mkdir -p "$R"
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, build_gpu, $T, revision
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
KEEP=build-gpu/reference_profile.json
REV=$(revision)
want() { [[ "$WHAT" == *" all "* || "$WHAT" == *" $1 "* ]]; }

echo "== build $(date +%T) revision $REV"
REV=$REV build_gpu "$R/build.log" twinstep || exit 1
nvidia-smi -L > "$R/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
  torch.backends.cudnn.version(), torch.cuda.get_device_name(0))" > "$R/torch_versions.txt" 2>&1
cat "$R/gpu.txt" "$R/torch_versions.txt"

# The zoo models with fewer layers (the shapes of every layer stay the zoo's).
fewer_layer_models "$R/models" calibration/scripts/run_reference_h100x1.sh

if want calibrate && [ -z "${PROFILE:-}" ]; then
  echo "== calibrate (one GPU, suite ${SUITE:-quick}) $(date +%T)"
  timeout 60 python3 calibration/scripts/torch_host_overhead.py -o "$R/framework.json" > "$R/framework.log" 2>&1 < /dev/null
  FW=()
  [ -s "$R/framework.json" ] && FW=(--framework "$R/framework.json")
  timeout 400 $T calibrate --suite "${SUITE:-quick}" --cluster dgx-h100 --name "h100x1-reference-$REV" "${FW[@]}" \
    -o "$R/profile_h100x1.json" --raw "$R/profile_h100x1.raw.jsonl" > "$R/calibrate.log" 2>&1 < /dev/null
  echo "calibrate exit $?"; tail -3 "$R/calibrate.log"
  [ -s "$R/profile_h100x1.json" ] && cp "$R/profile_h100x1.json" "$KEEP"
fi
PROF=${PROFILE:-}
[ -z "$PROF" ] && [ -s "$KEEP" ] && PROF=$KEEP
[ -n "$PROF" ] && cp "$PROF" "$R/profile_used.json"

# run_case NAME MODEL SEQ RECOMPUTE(0|1) [DTYPE [GBS]]  (GBS: micro-batches of one sequence per step, default 1)
run_case() {
  local name=$1 model=$2 seq=$3 rc=$4 dtype=${5:-bf16} gbs=${6:-1}
  local D=$R/$name
  mkdir -p "$D"
  echo "== $name $(date +%T)"
  local flags=(--model "$R/models/$model.json" --gpus 1 --mbs 1 --gbs "$gbs" --seq "$seq")
  [ "$rc" = 1 ] && flags+=(--recompute full --recompute-method uniform --recompute-num-layers 1)
  [ "$dtype" = fp8 ] && flags+=(--dtype fp8 --fp8-recipe tensorwise)
  $T lower "${flags[@]}" -o "$D/step.json" --summary > "$D/lower.txt" 2>&1 || { tail -3 "$D/lower.txt"; return; }
  $T simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile datasheet -o "$D/pred_datasheet.json" \
    > "$D/pred_datasheet.txt" 2>&1
  $T analyze --json "$D/pred_datasheet.json" > "$D/pred_datasheet.analyze.json" 2>&1
  if [ -n "$PROF" ]; then
    $T lower "${flags[@]}" --profile "$PROF" -o "$D/step_profile.json" > /dev/null 2>&1
    $T simulate "$D/step_profile.json" --cluster dgx-h100 --gpus 1 --profile "$PROF" -o "$D/pred_profile.json" \
      > "$D/pred_profile.txt" 2>&1
    $T analyze --json "$D/pred_profile.json" > "$D/pred_profile.analyze.json" 2>&1
  fi
  # The backend runs the schedule lowered with the profile when there is one: that schedule carries the framework
  # host costs (module calls, autograd, optimizer; measured in PyTorch on the GPU machine) as host ops, as production
  # training pays them; step.json (lowered without a profile) has no host ops at all.
  local run_step=$D/step.json
  [ -s "$D/step_profile.json" ] && run_step=$D/step_profile.json
  echo "backend schedule: $run_step" > "$D/backend_schedule.txt"
  local smi="nvidia-smi --query-gpu=timestamp,memory.used,clocks.sm,power.draw --format=csv,noheader,nounits -lms 100"
  $smi > "$D/backend.smi.csv" 2>&1 &
  local s=$!
  # shellcheck disable=SC2086  # $MPI is a command line
  timeout 300 $MPI -np 1 $T run "$run_step" -o "$D/backend.json" --warmup 2 --steps "${BSTEPS:-5}" \
    > "$D/backend.log" 2>&1 < /dev/null
  echo "backend exit $?" >> "$D/backend.log"
  kill $s 2>/dev/null
  [ -s "$D/backend.json" ] && $T analyze --json "$D/backend.json" > "$D/backend.analyze.json" 2>&1
  $smi > "$D/torch.smi.csv" 2>&1 &
  s=$!
  # shellcheck disable=SC2086  # TORCH_FLAGS are words
  timeout 300 python3 calibration/reference/torch_reference.py --schedule "$D/step.json" --warmup 3 ${TORCH_FLAGS:-} \
    --steps "${STEPS:-10}" --profile-trace "$D/torch_trace.json" -o "$D/torch.json" > "$D/torch.log" 2>&1 < /dev/null
  echo "torch exit $?" >> "$D/torch.log"
  kill $s 2>/dev/null
  if [ -f "$D/torch_trace.json" ]; then
    # issue 19: the torch trace imported onto the schedule, compared with the prediction, and fitted from.
    $T import-trace "$D/torch_trace.json" --schedule "$D/step.json" -o "$D/torch_measured.json" > "$D/import.txt" 2>&1
    head -2 "$D/import.txt"
    if [ -s "$D/torch_measured.json" ]; then
      # Op by op, what the PyTorch step runs slower or faster than the backend (the trace imported once more onto
      # the schedule the backend ran, when that is step_profile.json).
      local cmp=$D/torch_measured.json
      if [ "$run_step" != "$D/step.json" ]; then
        cmp=$D/torch_measured_profile.json
        $T import-trace "$D/torch_trace.json" --schedule "$run_step" -o "$cmp" > "$D/import_profile.txt" 2>&1
      fi
      [ -s "$D/backend.json" ] && $T compare "$D/backend.json" "$cmp" > "$D/compare_backend_vs_torch.txt" 2>&1
      # FIT_BASE: the fit's base profile (default: the measured profile of the cluster's GPU, as predict chooses;
      # FIT_BASE=datasheet for the datasheet defaults); the trace's figures anchor its tables, which give the shape
      # dependence (calibration/fit_trace.cpp). Only a profile measured on this GPU: an H100 profile's attention
      # curve made an H200 trace's fit worse at 16k (docs/import-trace.md).
      local base=()
      [ -n "${FIT_BASE:-}" ] && base=(--profile "$FIT_BASE")
      $T calibrate --from-trace "$D/torch_measured.json" --cluster dgx-h100 "${base[@]}" \
        -o "$D/profile_from_trace.json" > "$D/from_trace.log" 2>&1
      $T simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile "$D/profile_from_trace.json" \
        -o "$D/pred_from_trace.json" > /dev/null 2>&1
      $T analyze --json "$D/pred_from_trace.json" > "$D/pred_from_trace.analyze.json" 2>&1
    fi
    gzip -9f "$D/torch_trace.json"
  fi
  python3 calibration/reference/reference_table.py "$D" 2>&1 | tail -1
}

CASES=()
for seq in 2048 4096 8192 16384; do
  { want dense || want "dense_s$seq"; } && CASES+=("dense_s$seq llama3-8b-4l $seq 0")
done
for seq in 2048 4096 8192 16384; do
  { want dense_rc || want "dense_s${seq}_rc"; } && CASES+=("dense_s${seq}_rc llama3-8b-4l $seq 1")
done
{ want dense_fp8 || want dense_s4096_fp8; } && CASES+=("dense_s4096_fp8 llama3-8b-4l 4096 0 fp8")
# Another micro-batch count (issue 19's cross-fit check: the fit from dense_s4096 predicting 4 micro-batches).
{ want dense_mb || want dense_s4096_mb4; } && CASES+=("dense_s4096_mb4 llama3-8b-4l 4096 0 bf16 4")
{ want moe || want moe_s4096; } && CASES+=("moe_s4096 qwen3-30b-a3b-2l 4096 0")
{ want moe || want moe_s4096_rc; } && CASES+=("moe_s4096_rc qwen3-30b-a3b-2l 4096 1")
for c in "${CASES[@]}"; do
  # shellcheck disable=SC2086
  run_case $c
done
# The fit from dense_s4096's torch trace (kept on the warm machine for later calls) predicting every case (other
# sequence lengths, recompute, MoE).
FIT=build-gpu/reference_fit_dense_s4096.json
[ -s "$R/dense_s4096/profile_from_trace.json" ] && cp "$R/dense_s4096/profile_from_trace.json" "$FIT"
if [ -s "$FIT" ]; then
  echo "== predictions with the fit from dense_s4096's torch trace $(date +%T)"
  cp "$FIT" "$R/cross_fit_profile.json"
  for D in "$R"/*/; do
    [ -s "$D/step.json" ] || continue
    $T simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile "$FIT" -o "$D/pred_cross_fit.json" > /dev/null 2>&1
    $T analyze --json "$D/pred_cross_fit.json" > "$D/pred_cross_fit.analyze.json" 2>&1
  done
fi
echo "== table $(date +%T)"
python3 calibration/reference/reference_table.py "$R"/*/ > "$OUT/table.md" 2>&1
cat "$OUT/table.md"
echo "== done $(date +%T)"
