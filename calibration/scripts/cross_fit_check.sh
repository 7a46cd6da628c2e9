#!/usr/bin/env bash
# Issue 19's check "a fit from one layout's trace predicts another layout within 5 %", on CPU, from the committed
# reference runs: fit a profile from one case's imported PyTorch trace (`calibrate --from-trace`), simulate every
# case's schedule with it and compare with the case's PyTorch step (torch.json: median of the timed steps, CUDA
# events) and, op class by op class, with its imported trace (`twinstep compare`).
#
# Usage, from the repository root:
#   calibration/scripts/cross_fit_check.sh TWINSTEP OUT [RUNS] [FIT_CASE] [-- calibrate flags...]
#   TWINSTEP: the twinstep binary; OUT: a new folder; RUNS: the reference run's r/ folder (default: the
#   session-11 H100 run after the optimizer-order fix, torchgap_check/torchgap.tgz unpacked beside it is the newer); FIT_CASE: the case fitted from (default dense_s4096); calibrate flags, e.g. --profile BASE.json (the
#   run's own measured profile: RUNS/profile_used.json).
# Writes OUT/fit.json, OUT/fit.log, OUT/<case>.{sim.json,compare.txt} and prints a table (also OUT/table.txt).
set -eu
T=$1
OUT=$2
RUNS=${3:-calibration/measured/h100x1/session11/reference/r}
FIT_CASE=${4:-dense_s4096}
shift $(($# < 4 ? $# : 4))
[ "${1:-}" = "--" ] && shift
mkdir -p "$OUT"
"$T" calibrate --from-trace "$RUNS/$FIT_CASE/torch_measured.json" --cluster dgx-h100 "$@" -o "$OUT/fit.json" \
  > "$OUT/fit.log" 2>&1
{
  printf '%-14s %10s %10s %8s   %s\n' case "torch ms" "pred ms" error "op class durations: predicted vs the imported trace"
  for D in "$RUNS"/*/; do
    c=$(basename "$D")
    [ -s "$D/step.json" ] && [ -s "$D/torch.json" ] && [ -s "$D/torch_measured.json" ] || continue
    "$T" simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile "$OUT/fit.json" -o "$OUT/$c.sim.json" > /dev/null
    "$T" compare "$OUT/$c.sim.json" "$D/torch_measured.json" > "$OUT/$c.compare.txt"
    pred=$("$T" analyze --json "$OUT/$c.sim.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_time_s"]*1e3)')
    torch=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step_time_s"]*1e3)' "$D/torch.json")
    classes=$(awk '/^op classes/{on=1; getline; next} on && NF==0{on=0} on{printf "%s %s ", $1, $(NF-2)}' "$OUT/$c.compare.txt")
    python3 -c 'import sys; t, p = float(sys.argv[2]), float(sys.argv[3]); print("%-14s %10.1f %10.1f %+7.1f%%   %s" % (sys.argv[1], t, p, 100 * (p - t) / t, sys.argv[4]))' \
      "$c" "$torch" "$pred" "$classes"
  done
} | tee "$OUT/table.txt"
