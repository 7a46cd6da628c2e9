#!/usr/bin/env bash
# Session 16's one device call (untracked, not committed): the MoE routing microbenchmark (torch only, no build),
# then issue 21's memory cases (memval_h100x1.sh's, MoE with recompute first) within the call's time.
set -u
OUT=$1
LIMIT=${2:-600}  # the call's limit in seconds: the tables and the tarball need the last ~55 s
mkdir -p "$OUT/moe_routing"
START=$SECONDS
. calibration/scripts/device_env.sh
gpu_info "$OUT"
timeout 150 taskset -c 2 python3 calibration/scripts/torch_moe_routing.py -o "$OUT/moe_routing/moe_routing.json" \
  --tokens 4096,1024,16384 --budget-s 110 > "$OUT/moe_routing/moe_routing.log" 2>&1
echo "torch_moe_routing exit $? after $((SECONDS - START)) s" | tee -a "$OUT/moe_routing/moe_routing.log"
W=$(mktemp -d)
export PROFILE=calibration/profiles/h100x1.json STEPS=3 BSTEPS=2 TORCH_FLAGS=--fuse-elementwise
left=$((LIMIT - 55 - (SECONDS - START)))
timeout "$left" bash calibration/scripts/run_reference_h100x1.sh "$W" moe_s4096_rc dense_s4096 moe_s4096 dense_s4096_rc \
  dense_s8192 > "$OUT/run.log" 2>&1
echo "run_reference exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
python3 calibration/reference/memory_validation.py "$T" "$W"/r > "$OUT/memory_table.md" 2>&1
python3 calibration/reference/reference_table.py "$W"/r/*/ > "$OUT/table.md" 2>&1
tar czf "$OUT/memval.tgz" -C "$W" --exclude='*.json.gz' r
tail -5 "$OUT/moe_routing/moe_routing.log"; tail -3 "$OUT/run.log"; cat "$OUT/memory_table.md"
echo "total $((SECONDS - START)) s"
