#!/usr/bin/env bash
# Issue 21's production layouts on 80 GiB H100: the memory verdict of the tightest rank under the datasheet memory
# costs and a profile's measured ones (docs/memory.md, "Issue 21's layouts and their margins"). The run configs are
# bench/layouts/issue21/*.json (Megatron field names); DeepSeek-V3 runs without its MTP module (not modelled).
# Usage: bench/scripts/issue21_memory.sh TWINSTEP [PROFILE]   (PROFILE default calibration/profiles/h100x1.json)
set -eu
T=$1
PROFILE=${2:-calibration/profiles/h100x1.json}
L=bench/layouts/issue21
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -c "import json,sys; m=json.load(open('models/zoo/deepseek-v3.json')); m['mtp_num_layers']=0; json.dump(m, open(sys.argv[1], 'w'))" "$TMP/deepseek-v3-nomtp.json"
model_of() {
  case $1 in
    qwen3-30b-a3b*) echo qwen3-30b-a3b ;;
    qwen3-235b-a22b*) echo qwen3-235b-a22b ;;
    deepseek-v3*) echo "$TMP/deepseek-v3-nomtp.json" ;;
    nemotron4-340b*) echo nemotron4-340b ;;
    llama3.1-405b*) echo llama3.1-405b ;;
  esac
}
echo "layout | costs | peak | usable | margin"
for f in "$L"/*.json; do
  name=$(basename "$f" .json)
  for p in datasheet "$PROFILE"; do
    line=$("$T" lower --model "$(model_of "$name")" --config "$f" --representatives --per-tp-group --summary \
      --profile "$p" -o "$TMP/out.json" 2>&1 | awk '/= allocator reserved/ {peak=$4" "$5} /usable capacity/ {use=$3" "$4}
        /^ *margin / {m="+"$2" "$3} /short by/ {m="-"$3" "$4} END {print peak " | " use " | " m}')
    echo "$name | $([ "$p" = datasheet ] && echo datasheet || echo measured) | $line"
  done
done
