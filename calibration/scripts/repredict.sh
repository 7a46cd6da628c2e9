#!/usr/bin/env bash
# Re-predicts a folder of measured validation traces without a GPU, as the CI test does: the schedule embedded in
# each TRACES/<case>.trace.json is simulated with PROFILE (analytic fidelity, cluster CLUSTER, the trace's world
# size); OUT gets <case>.pred.json beside a link to each trace, and validation_table.py tabulates the error, the MAE
# and the sign of every overlap effect.
# Usage: calibration/scripts/repredict.sh TRACES PROFILE OUT [TWINSTEP] [CLUSTER]
#   TWINSTEP defaults to build/cli/twinstep, CLUSTER to h200x2-nvlink (the 4- and 8-GPU traces: hgx-h200).
#   SIMULATE_FLAGS (environment): more simulate flags, e.g. "--clock-model power-cap".
set -eu
TRACES=$1
PROFILE=$2
OUT=$3
T=${4:-build/cli/twinstep}
CLUSTER=${5:-h200x2-nvlink}
mkdir -p "$OUT"
for f in "$TRACES"/*.trace.json; do
  name=$(basename "$f" .trace.json)
  python3 -c "import json, sys; json.dump(json.load(open(sys.argv[1]))['schedule'], open(sys.argv[2], 'w'))" \
    "$f" "$OUT/$name.schedule.json"
  gpus=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['world_size'])" "$OUT/$name.schedule.json")
  ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$OUT/$name.trace.json"
  "$T" simulate "$OUT/$name.schedule.json" --cluster "$CLUSTER" --gpus "$gpus" --fidelity analytic \
    --profile "$PROFILE" ${SIMULATE_FLAGS:-} -o "$OUT/$name.pred.json" > "$OUT/$name.pred.log" 2>&1 \
    || echo "$name: simulate failed"
done
python3 "$(dirname "$0")/validation_table.py" "$OUT"
