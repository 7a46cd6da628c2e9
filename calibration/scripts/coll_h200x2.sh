#!/usr/bin/env bash
# On the two-H200 machine, from the repository root: re-measures only the collective and p2p groups of the default
# suite (coll.*, p2p.*), keeping every other group of the committed raw file (--resume over a copy stripped of those
# groups). Runs, each into OUT/r/<run>.raw.jsonl:
#   a, b        two independent runs with NCCL's own choice (b judges a fit made from a on points it did not see);
#   debug       NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=INIT,TUNING,COLL (log: OUT/r/nccl_debug.log): the algorithm,
#               protocol and channels NCCL picked per call (timings perturbed by the logging: not for fitting);
#   ll, ll128, simple   NCCL_PROTO forced to one protocol: each protocol's own latency and bandwidth over all sizes.
# Usage: calibration/scripts/coll_h200x2.sh OUT [PRIOR_RAW] (default calibration/profiles/h200x2.raw.jsonl).
#   RUNS="a b" (environment) measures only those runs (default: all six). OUT/coll.tgz packs OUT/r at the end (the
#   device tool returns a limited number of files).
set -u
OUT=$1
PRIOR=${2:-calibration/profiles/h200x2.raw.jsonl}
mkdir -p "$OUT/r"
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $T, gpu_info
echo "== build $(date +%T)"
build_gpu "$OUT/r/build.log" twinstep || exit 1
gpu_info "$OUT/r"
grep -v -E '"group":"(coll|p2p)\.' "$PRIOR" > "$OUT/r/prior.raw.jsonl"
RUNS=${RUNS:-a b debug ll ll128 simple}
trap 'tar czf "$OUT/coll.tgz" -C "$OUT" r' EXIT
measure() {  # name, then NAME=VALUE environment settings for this run only
  local name=$1
  shift
  case " $RUNS " in *" $name "*) ;; *) return 0 ;; esac
  local xs=() kv
  for kv in "$@"; do xs+=(-x "${kv%%=*}"); done
  cp "$OUT/r/prior.raw.jsonl" "$OUT/r/$name.raw.jsonl"
  echo "== $name $(date +%T) $*"
  env "$@" timeout 120 $MPI "${xs[@]}" -np 2 $T calibrate --suite default --resume --raw "$OUT/r/$name.raw.jsonl" \
    -o "$OUT/r/$name.profile.json" --warmup 3 --steps 15 > "$OUT/r/$name.log" 2>&1 < /dev/null
  echo "   exit $? $(grep -c 'figures' "$OUT/r/$name.log") groups measured"
}
measure a
measure b
measure debug NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,TUNING,COLL
if [ -f "$OUT/r/debug.log" ]; then
  grep -E "NCCL INFO" "$OUT/r/debug.log" > "$OUT/r/nccl_debug.log"
  grep -v "NCCL INFO" "$OUT/r/debug.log" > "$OUT/r/debug.calibrate.log"
  rm -f "$OUT/r/debug.log"
fi
measure ll NCCL_PROTO=LL
measure ll128 NCCL_PROTO=LL128
measure simple NCCL_PROTO=Simple
echo "== done $(date +%T)"
