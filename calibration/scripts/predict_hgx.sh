#!/usr/bin/env bash
# Predicts every case of a cases file for one HGX H200 node without a GPU: lowers it (as validate_hgx.sh does),
# simulates it on cluster hgx-h200 (an N-GPU job on the node's first N GPUs) with PROFILE at the analytic and the
# flow fidelity, and writes OUT/<case>.<fidelity>.pred.json and .log; then tabulates step times, breakdowns and the
# effect of each .off/.on pair (predicted_table.py) into OUT/PREDICTED.md.
# Usage: calibration/scripts/predict_hgx.sh OUT CASES [PROFILE] [TWINSTEP]
#   CASES: calibration/validation/h200x4/cases.txt or h200x8/cases.txt (each case names its GPU count);
#   PROFILE defaults to calibration/profiles/h200x2.json (the two-GPU profile), TWINSTEP to build/cli/twinstep.
set -eu
OUT=$1
CASES=$2
PROFILE=${3:-calibration/profiles/h200x2.json}
T=${4:-build/cli/twinstep}
mkdir -p "$OUT"
grep -v '^#' "$CASES" | while IFS='|' read -r name gpus flags; do
  name=$(echo $name); gpus=$(echo $gpus)
  model="--model calibration/validation/models/llama3-8b-4l.json"; case "$flags" in *--model*) model="";; esac
  # shellcheck disable=SC2086
  "$T" lower $model --gpus $gpus $flags --gpu-memory-gib 141 -o "$OUT/$name.schedule.json" > "$OUT/$name.lower.log" \
    2>&1 < /dev/null || { echo "$name: lower failed: $(tail -1 "$OUT/$name.lower.log")"; continue; }
  "$T" validate "$OUT/$name.schedule.json" >> "$OUT/$name.lower.log" 2>&1 || echo "$name: validate failed"
  for fid in analytic flow; do
    "$T" simulate "$OUT/$name.schedule.json" --cluster hgx-h200 --gpus "$gpus" --profile "$PROFILE" --fidelity $fid \
      -o "$OUT/$name.$fid.pred.json" > "$OUT/$name.$fid.log" 2>&1 < /dev/null || echo "$name: simulate $fid failed"
  done
done
python3 "$(dirname "$0")/predicted_table.py" "$OUT" > "$OUT/PREDICTED.md"
cat "$OUT/PREDICTED.md"
