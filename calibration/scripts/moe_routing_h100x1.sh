#!/usr/bin/env bash
# One H100 (nvidia-h100-x1), one device call of at most 4 minutes, no build (pure torch): Megatron-Core's eager MoE
# router and permute/unpermute/sort-chunks sequences op by op, forward and backward (torch_moe_routing.py), at
# T 1024/4096/16384 tokens x E 64/128 top-8 and E 8 top-2, hidden 2048, pinned to one core as torch_framework.py is.
# Fitted here with `twinstep calibrate --fit ... --moe-routing OUT/moe_routing.json` (calibration/profiles/README.md).
#
# Usage, from the repository root: calibration/scripts/moe_routing_h100x1.sh OUT
# Writes OUT/moe_routing.json (written after every case: a run cut short keeps the cases it finished),
# OUT/moe_routing.log and OUT/nvidia-smi.csv.
set -uo pipefail
OUT=${1:?usage: moe_routing_h100x1.sh OUT}
mkdir -p "$OUT"
source calibration/scripts/device_env.sh  # torch's NCCL/cuBLAS first on the library path, gpu_info
gpu_info "$OUT"
START=$SECONDS
# 200 s of cases at most (a case not started by then is skipped and named in the log), 225 s hard limit.
timeout 225 taskset -c 2 python3 calibration/scripts/torch_moe_routing.py -o "$OUT/moe_routing.json" --budget-s 200 \
  > "$OUT/moe_routing.log" 2>&1
echo "torch_moe_routing.py exit $? after $((SECONDS - START)) s" | tee -a "$OUT/moe_routing.log"
tail -40 "$OUT/moe_routing.log"
