#!/usr/bin/env bash
# On one HGX H200 node (NVSwitch; device kinds nvidia-h200-x4 / nvidia-h200-x8), from the repository root: builds
# twinstep with the backend, runs the calibration suite under mpirun -np N (compute on every GPU; collectives over the
# spans 2, 4, ... N; send/recv pairs; host costs; GEMM + collective co-runs over all N GPUs; corun.recv_wait), the
# PyTorch host-overhead script, and re-fits the raw file with the framework section on cluster hgx-h200 (an N-GPU job
# on the first N GPUs of the node); packs OUT/results.tgz.
# Usage: calibration/scripts/run_calibration_hgx.sh OUT N [default|quick] [PRIOR_RAW]
#   N: the number of GPUs (2, 4 or 8).
#   PRIOR_RAW: a raw.jsonl of an interrupted run (same suite, N GPUs): its groups are kept (--resume) and only the
#   rest is measured, so a second 600 s device call finishes what the first could not.
#   CALIBRATE_TIMEOUT_S (environment, default 400): the calibrate step is cut there so that the raw file is packed
#   within one 600 s call; rerun with PRIOR_RAW if calibrate.log shows it was cut.
# Expected time: build ~2 min (fresh machine), suite default ~3-6 min (one set of collectives per span), torch 30 s.
# Every mpirun reads /dev/null.
set -u
OUT=$1
N=$2
SUITE=${3:-default}
PRIOR=${4:-}
CUT_S=${CALIBRATE_TIMEOUT_S:-400}
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $T, results_in
results_in "$OUT"
echo "== build $(date +%T)"
build_gpu "$OUT/r/build.log" twinstep || exit 1
gpu_info "$OUT/r" topo
RESUME=""
if [ -n "$PRIOR" ]; then cp "$PRIOR" "$OUT/r/raw.jsonl"; RESUME=--resume; fi
echo "== calibrate -np $N, cut at $CUT_S s $(date +%T)"
timeout "$CUT_S" $MPI -np "$N" $T calibrate --suite "$SUITE" -o "$OUT/r/profile.json" --raw "$OUT/r/raw.jsonl" \
  $RESUME --cluster hgx-h200 --steps 5 --warmup 2 2>&1 < /dev/null | tee "$OUT/r/calibrate.log" | tail -40
echo "== torch host overhead $(date +%T)"
timeout 60 python3 calibration/scripts/torch_host_overhead.py -o "$OUT/r/framework.json" 2>&1 < /dev/null | tail -3
echo "== fit with the framework section $(date +%T)"
FW=""; [ -s "$OUT/r/framework.json" ] && FW="--framework $OUT/r/framework.json"
$T calibrate --fit "$OUT/r/raw.jsonl" $FW --cluster hgx-h200 --name "$N H200 (HGX, NVSwitch), suite $SUITE" \
  -o "$OUT/r/profile.json" > "$OUT/r/fit.log" 2>&1 < /dev/null || echo "fit failed: $(tail -3 "$OUT/r/fit.log")"
tail -30 "$OUT/r/fit.log"
echo "== done $(date +%T)"
