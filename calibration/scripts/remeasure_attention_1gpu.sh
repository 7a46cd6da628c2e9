#!/usr/bin/env bash
# One H100 (device kind nvidia-h100-x1): re-measures the attention group of the one-GPU profile with the kernel the
# backend runs today (cuDNN's fused attention where cuDNN is found; the trace context's `attention_kernel` names it),
# keeping the other groups of calibration/profiles/h100x1.raw.jsonl as they were measured (`calibrate --resume`
# measures only the groups missing from the raw file), refits the profile on the device with the command of
# calibration/profiles/README.md, and runs the PyTorch reference cases with it (run_reference_h100x1.sh).
# Usage, from the repository root: calibration/scripts/remeasure_attention_1gpu.sh OUT [REFERENCE CASES...]
#   (default cases: dense_s2048 dense_s4096 dense_s8192 dense_s16384). Results: OUT/h100x1.{raw.jsonl,json,fit.log},
#   OUT/calibrate.log, OUT/ref/ (the reference table in OUT/ref/table.md).
set -u
OUT=$1
shift
CASES=${*:-dense_s2048 dense_s4096 dense_s8192 dense_s16384}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, build_gpu, $T
REV=$(revision)
S6=calibration/measured/h100x1/session6
echo "== build $(date +%T) revision $REV"
REV=$REV build_gpu "$OUT/build.log" twinstep || exit 1
grep -E "cuDNN fused attention" "$OUT/build.log" | head -1
python3 - calibration/profiles/h100x1.raw.jsonl "$OUT/h100x1.raw.jsonl" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
kept = [l for l in lines if json.loads(l).get("group") != "compute.attention"]
open(sys.argv[2], "w").write("\n".join(kept) + "\n")
print(f"raw: {len(lines) - len(kept)} group(s) dropped for re-measurement")
PY
echo "== calibrate attention $(date +%T)"
timeout 240 $T calibrate --suite default --resume --raw "$OUT/h100x1.raw.jsonl" -o "$OUT/h100x1.device.json" \
  --steps 5 --warmup 2 > "$OUT/calibrate.log" 2>&1 < /dev/null
echo "calibrate exit $?"; grep -E "attention|error" "$OUT/calibrate.log" | head -5
$T calibrate --fit "$OUT/h100x1.raw.jsonl" --cluster dgx-h100 --framework "$S6/h100x1.framework.json" \
  --memory "$S6/h100x1.memory.json" --borrow calibration/profiles/h200x2.json \
  --name "one H100 SXM5 80GB, suite default; collectives and co-runs from two H200 (NV18)" \
  -o "$OUT/h100x1.json" 2> "$OUT/h100x1.fit.log"
echo "fit exit $?"; grep -iE "attention" "$OUT/h100x1.fit.log" | head -5
# shellcheck disable=SC2086  # the case names are words
PROFILE=$OUT/h100x1.json STEPS=5 BSTEPS=3 bash calibration/scripts/run_reference_h100x1.sh "$OUT/ref" $CASES
