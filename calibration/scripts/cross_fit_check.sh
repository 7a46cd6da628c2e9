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
# Writes OUT/fit.json, OUT/fit.log, OUT/<case>.{sim.json,compare.txt,own_fit.json} and prints a table (also
# OUT/table.txt). Columns: the PyTorch step (torch.json, no profiler) and the imported trace's step (the profiled
# step the fits come from); the prediction from FIT_CASE's fit and its error; the error of the case's own fit
# (issue 19's first check); the host cost per op each fit took from its trace (launch.compute, us) and the case's
# host-time ratio to FIT_CASE's trace (trace_host_speed.py: the same host-only ATen work, 1.5 = the case's process
# ran its host 1.5 times slower; only between cases of the same framework code: another length or micro-batch
# count, not fp8 or another model, "-" there); then, as a diagnostic and not a prediction (it reads the case's own trace),
# the error with FIT_CASE's fit whose launch.compute is scaled by that ratio: what the fit gives where both
# processes' hosts ran at one speed. Last, the op classes' durations: predicted vs the imported trace.
set -eu
T=$1
OUT=$2
RUNS=${3:-calibration/measured/h100x1/session11/reference/r}
FIT_CASE=${4:-dense_s4096}
shift $(($# < 4 ? $# : 4))
[ "${1:-}" = "--" ] && shift
HERE=$(dirname "$0")
mkdir -p "$OUT"
"$T" calibrate --from-trace "$RUNS/$FIT_CASE/torch_measured.json" --cluster dgx-h100 "$@" -o "$OUT/fit.json" \
  > "$OUT/fit.log" 2>&1
trace_of() {
  local f
  for f in "$1/torch_trace.json" "$1/torch_trace.json.gz"; do
    [ -s "$f" ] && { echo "$f"; return; }
  done
  return 0
}
step_ms() { "$T" analyze --json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_time_s"]*1e3)'; }
# Whether two cases ran the same framework code (torch.json: every shape but the sequence length and the micro-batch
# count, and the implementation paths): only then is one's host-only ATen work the other's.
same_code() {
  python3 -c 'import json,sys
def key(path):
    t = json.load(open(path))
    shapes = {k: v for k, v in t["shapes"].items() if k not in ("seq", "micro_batches")}
    return shapes, t.get("elementwise"), t.get("wgrad_accumulation"), (t.get("attention") or {}).get("path")
sys.exit(0 if key(sys.argv[1]) == key(sys.argv[2]) else 1)' "$1" "$2"
}
launch_us() { python3 -c 'import json,sys; print("%.0f" % (json.load(open(sys.argv[1]))["launch"]["compute"]*1e6))' "$1"; }
{
  printf '%-16s %8s %8s %8s %7s %7s %5s %5s %6s %7s   %s\n' case "torch ms" "trace ms" "pred ms" error "own fit" \
    "host" "own" ratio "scaled" "op class durations: predicted vs the imported trace"
  fit_trace=$(trace_of "$RUNS/$FIT_CASE")
  for D in "$RUNS"/*/; do
    c=$(basename "$D")
    [ -s "$D/step.json" ] && [ -s "$D/torch.json" ] && [ -s "$D/torch_measured.json" ] || continue
    "$T" simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile "$OUT/fit.json" -o "$OUT/$c.sim.json" > /dev/null
    "$T" compare "$OUT/$c.sim.json" "$D/torch_measured.json" > "$OUT/$c.compare.txt"
    pred=$(step_ms "$OUT/$c.sim.json")
    torch=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step_time_s"]*1e3)' "$D/torch.json")
    trace=$(python3 -c 'import json,sys; s=sorted(json.load(open(sys.argv[1]))["step_times_ns"]); print(s[len(s)//2]/1e6)' \
      "$D/torch_measured.json")
    "$T" calibrate --from-trace "$D/torch_measured.json" --cluster dgx-h100 "$@" -o "$OUT/$c.own_fit.json" > /dev/null 2>&1
    "$T" simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile "$OUT/$c.own_fit.json" -o "$OUT/$c.own.sim.json" \
      > /dev/null
    own=$(step_ms "$OUT/$c.own.sim.json")
    ratio=- scaled=-
    case_trace=$(trace_of "$D")
    if [ -n "$fit_trace" ] && [ -n "$case_trace" ] && same_code "$RUNS/$FIT_CASE/torch.json" "$D/torch.json" &&
      ratio=$(python3 "$HERE/trace_host_speed.py" --json "$fit_trace" "$case_trace" 2> "$OUT/$c.host_speed.log" |
        python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)[1]["host_time_ratio"])'); then
      python3 -c 'import json,sys; p = json.load(open(sys.argv[1])); p["launch"]["compute"] *= float(sys.argv[3]); json.dump(p, open(sys.argv[2], "w"))' \
        "$OUT/fit.json" "$OUT/$c.host_scaled_fit.json" "$ratio"
      "$T" simulate "$D/step.json" --cluster dgx-h100 --gpus 1 --profile "$OUT/$c.host_scaled_fit.json" \
        -o "$OUT/$c.host_scaled.sim.json" > /dev/null
      scaled=$(step_ms "$OUT/$c.host_scaled.sim.json")
    else
      ratio=-
    fi
    classes=$(awk '/^op classes/{on=1; getline; next} on && NF==0{on=0} on{printf "%s %s ", $1, $(NF-2)}' "$OUT/$c.compare.txt")
    python3 - "$c" "$torch" "$trace" "$pred" "$own" "$(launch_us "$OUT/fit.json")" "$(launch_us "$OUT/$c.own_fit.json")" \
      "$ratio" "$scaled" "$classes" << 'PY'
import sys
c, torch, trace, pred, own, host, own_host, ratio, scaled, classes = sys.argv[1:]
t = float(torch)
err = lambda p: "-" if p == "-" else "%+.1f%%" % (100 * (float(p) - t) / t)
print("%-16s %8.1f %8.1f %8.1f %7s %7s %5s %5s %6s %7s   %s" % (c, t, float(trace), float(pred), err(pred), err(own), host,
      own_host, ratio, err(scaled), classes))
PY
  done
} | tee "$OUT/table.txt"
