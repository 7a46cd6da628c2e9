#!/bin/sh
# Runs every case of bench/scale_bench (issue 18's table), one process per case and fidelity, each stopped at
# LIMIT CPU seconds (default 60, `ulimit -t`; the machine is shared, so CPU time, not wall time, is the limit; a wall
# limit of 5 x LIMIT backs it) or MEM_KB of address space (default 6.5 GB, `ulimit -v`): a stopped case prints
# "killed at" with its wall time and loses no other. Figures: bench/results/scale.md.
# Usage: bench/scripts/scale_cases.sh BUILD_DIR [LIMIT] [MEM_KB] [case:fidelity ...]
set -u
build=${1:?usage: scale_cases.sh BUILD_DIR [LIMIT] [MEM_KB] [case:fidelity ...]}
limit=${2:-60}
mem_kb=${3:-6500000}
shift $(( $# < 3 ? $# : 3 ))
cases=${*:-"llama70b-64:analytic llama405b-512:analytic gpt3-1t-512:analytic qwen235b-256:analytic qwen235b-256:flow llama405b-16k:flow"}
for cf in $cases; do
  c=${cf%%:*}
  f=${cf#*:}
  start=$(date +%s.%N)
  ( ulimit -v "$mem_kb"; ulimit -t "$limit"; exec timeout -s KILL $((5 * limit)) "$build/bench/scale_bench" "$c" "$f" )
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 1 ]; then
    printf '%-15s %-8s killed at %.1f s wall (exit %d; limits: %s CPU s, %s KB of address space)\n' "$c" "$f" \
      "$(echo "$(date +%s.%N) - $start" | bc)" $rc "$limit" "$mem_kb"
  fi
done
