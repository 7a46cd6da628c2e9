#!/usr/bin/env bash
# One GPU (H100 or H200), one device call (~4 minutes with the build): the inputs of the power-cap clock model
# (docs/calibration.md section 8, calibration/scripts/clock_model_check.py) on the GPU it runs on. Every schedule of
# power_mix_schedules.py (the GEMM shapes of the validation model alone; GEMM, causal and non-causal attention and
# HBM-bound work at set shares beside idle time or each other; GEMM at 85 % in blocks of 2, 10 and 50 ms) under
# `twinstep run --warmup 4 --steps 4` with the GPU monitor, two passes (b in reverse order), each run also writing the
# monitor's 1 ms sample series (--monitor-series, r/PASS/NAME.series.csv in results.tgz; clock_model_derive.py
# --series prints the clock and power within a step from them); then the suite's compute
# groups once more with the monitor (the clock each table is measured at: `calibrate --resume` on the committed raw file
# without its compute.* lines). No GPU setting is changed.
# Usage, from the repository root: calibration/scripts/power_mix_1gpu.sh OUT
#   Results: OUT/table.md (power_mix_table.py), OUT/compute_groups.raw.jsonl, OUT/results.tgz (traces, series, logs),
#   OUT/nvidia-smi.csv, OUT/build.log.
set -u
OUT=$1
mkdir -p "$OUT"
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
  *H100*) G=h100x1 ;; *H200*) G=h200x1 ;; *) echo "no H100 or H200 here" >&2; exit 2 ;;
esac
. "$(dirname "$0")/device_env.sh"
results_in "$OUT" a b schedules
gpu_info "$OUT"
nvidia-smi --query-gpu=power.limit,power.default_limit,power.max_limit,clocks.max.sm --format=csv \
  >> "$OUT/nvidia-smi.csv"
REV=$(revision)
echo "== build $(date +%T) revision $REV"
REV=$REV build_gpu "$OUT/build.log" twinstep || exit 1
python3 calibration/scripts/power_mix_schedules.py "$R/schedules"
mapfile -t NAMES < "$R/schedules/list.txt"
for pass in a b; do
  [ "$pass" = b ] && mapfile -t NAMES < <(tac "$R/schedules/list.txt")
  for n in "${NAMES[@]}"; do
    TWINSTEP_GPU_MONITOR_INTERVAL_MS=1 timeout 60 "$T" run "$R/schedules/$n.json" -o "$R/$pass/$n.trace.json" \
      --warmup 4 --steps 4 --monitor-series "$R/$pass/$n.series.csv" > "$R/$pass/$n.log" 2>&1 < /dev/null ||
      echo "$pass/$n: exit $?"
  done
done
python3 calibration/scripts/power_mix_table.py "$R" > "$OUT/table.md" 2>&1
grep -v '"group": *"compute\.' "calibration/profiles/$G.raw.jsonl" > "$R/no_compute.raw.jsonl"
timeout 240 "$T" calibrate --suite default --resume --raw "$R/no_compute.raw.jsonl" -o "$R/$G.device.json" \
  --steps 5 --warmup 2 > "$R/calibrate.log" 2>&1 < /dev/null
echo "calibrate exit $?"
grep '"group": *"compute\.' "$R/no_compute.raw.jsonl" > "$OUT/compute_groups.raw.jsonl"
cat "$OUT/table.md"
