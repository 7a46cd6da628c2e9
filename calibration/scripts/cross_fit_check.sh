#!/usr/bin/env bash
# Issue 19's check "a fit from one layout's trace predicts another layout within 5 %", on CPU, from the committed
# reference runs: fit a profile from one case's imported PyTorch trace (`calibrate --from-trace`), simulate every
# case's schedule with it and compare with the case's PyTorch step (torch.json: median of the timed steps, CUDA
# events) and, op class by op class, with its imported trace (`twinstep compare`).
#
# Usage, from the repository root:
#   calibration/scripts/cross_fit_check.sh TWINSTEP OUT [RUNS] [FIT_CASE] [-- calibrate flags...]
#   TWINSTEP: the twinstep binary; OUT: a new folder; RUNS: the reference run's r/ folder (default: the
#   session-11 H100 run after the optimizer-order fix; torchgap_check/torchgap.tgz unpacked beside it is the newer,
#   session 14's likewise); FIT_CASE: the case fitted from (default dense_s4096); calibrate flags, e.g.
#   --profile BASE.json (the run's own measured profile: RUNS/profile_used.json).
# Writes OUT/fit.json, OUT/fit.log, OUT/<case>.{sim.json,compare.txt,own_fit.json,...} and prints a table (also
# OUT/table.txt). Columns: the PyTorch step (torch.json, no profiler) and the imported trace's step (the profiled
# step the fits come from); the prediction from FIT_CASE's fit and its error; the error of the case's own fit
# (issue 19's first check); the host cost per op each fit took from its trace (launch.compute, us) and the case's
# host-time ratio to FIT_CASE's trace (trace_host_speed.py: the same host-only ATen work, 1.5 = the case's process
# ran its host 1.5 times slower; only between cases of the same framework code: another length or micro-batch
# count, not fp8 or another model, "-" there); then, as a diagnostic and not a prediction (it reads the case's own
# trace), the error with FIT_CASE's fit whose launch.compute is scaled by that ratio: what the fit gives where both
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
py() { python3 -c "import json, sys
$1" "${@:2}"; }
# The step (ms) of the schedule in case folder $1 simulated with profile $2 (the trace written to $3).
sim_ms() {
  "$T" simulate "$1/step.json" --cluster dgx-h100 --gpus 1 --profile "$2" -o "$3" > /dev/null
  "$T" analyze --json "$3" | py 'print(json.load(sys.stdin)["step_time_s"] * 1e3)'
}
launch_us() { py 'print("%.0f" % (json.load(open(sys.argv[1]))["launch"]["compute"] * 1e6))' "$1"; }
# Whether two cases ran the same framework code (torch.json: every shape but the sequence length and the micro-batch
# count, and the implementation paths): only then is one's host-only ATen work the other's.
same_code() {
  py 'def key(path):
    t = json.load(open(path))
    shapes = {k: v for k, v in t["shapes"].items() if k not in ("seq", "micro_batches")}
    return shapes, t.get("elementwise"), t.get("wgrad_accumulation"), (t.get("attention") or {}).get("path")
sys.exit(0 if key(sys.argv[1]) == key(sys.argv[2]) else 1)' "$1" "$2"
}
# Case folder $1's host-time ratio to FIT_CASE's trace, where both have a trace and run the same code; else "-".
host_ratio() {
  local fit_trace case_trace
  fit_trace=$(trace_of "$RUNS/$FIT_CASE")
  case_trace=$(trace_of "$1")
  if [ -n "$fit_trace" ] && [ -n "$case_trace" ] && same_code "$RUNS/$FIT_CASE/torch.json" "$1/torch.json"; then
    python3 "$HERE/trace_host_speed.py" --json "$fit_trace" "$case_trace" |
      py 'print("%.3f" % json.load(sys.stdin)[1]["host_time_ratio"])'
  else
    echo -
  fi
}
{
  printf '%-16s %8s %8s %8s %7s %7s %5s %5s %6s %7s   %s\n' case "torch ms" "trace ms" "pred ms" error "own fit" \
    "host" "own" ratio "scaled" "op class durations: predicted vs the imported trace"
  for D in "$RUNS"/*/; do
    c=$(basename "$D")
    [ -s "$D/step.json" ] && [ -s "$D/torch.json" ] && [ -s "$D/torch_measured.json" ] || continue
    pred=$(sim_ms "$D" "$OUT/fit.json" "$OUT/$c.sim.json")
    "$T" compare "$OUT/$c.sim.json" "$D/torch_measured.json" > "$OUT/$c.compare.txt"
    torch=$(py 'print(json.load(open(sys.argv[1]))["step_time_s"] * 1e3)' "$D/torch.json")
    trace=$(py 's = sorted(json.load(open(sys.argv[1]))["step_times_ns"]); print(s[len(s) // 2] / 1e6)' \
      "$D/torch_measured.json")
    "$T" calibrate --from-trace "$D/torch_measured.json" --cluster dgx-h100 "$@" -o "$OUT/$c.own_fit.json" \
      > "$OUT/$c.own_fit.log" 2>&1
    own=$(sim_ms "$D" "$OUT/$c.own_fit.json" "$OUT/$c.own.sim.json")
    ratio=$(host_ratio "$D" 2> "$OUT/$c.host_speed.log")
    scaled=-
    if [ "$ratio" != - ]; then
      py 'p = json.load(open(sys.argv[1]))
p["launch"]["compute"] *= float(sys.argv[3])
json.dump(p, open(sys.argv[2], "w"))' "$OUT/fit.json" "$OUT/$c.host_scaled_fit.json" "$ratio"
      scaled=$(sim_ms "$D" "$OUT/$c.host_scaled_fit.json" "$OUT/$c.host_scaled.sim.json")
    fi
    classes=$(awk '/^op classes/{on=1; getline; next} on && NF==0{on=0} on{printf "%s %s ", $1, $(NF-2)}' \
      "$OUT/$c.compare.txt")
    py 'c, torch, trace, pred, own, host, own_host, ratio, scaled, classes = sys.argv[1:]
t = float(torch)
err = lambda p: "-" if p == "-" else "%+.1f%%" % (100 * (float(p) - t) / t)
print("%-16s %8.1f %8.1f %8.1f %7s %7s %5s %5s %6s %7s   %s" % (c, t, float(trace), float(pred), err(pred), err(own),
      host, own_host, ratio, err(scaled), classes))' "$c" "$torch" "$trace" "$pred" "$own" \
      "$(launch_us "$OUT/fit.json")" "$(launch_us "$OUT/$c.own_fit.json")" "$ratio" "$scaled" "$classes"
  done
} | tee "$OUT/table.txt"
