#!/usr/bin/env bash
# Issue 17 item 3/4 on the GPU machine, from a source tree: the backend's peer-mapped send/recv (copy_engine,
# sm_kernel). On ONE GPU: builds backend_tests and runs its [peer] cases as two ranks sharing the GPU (CUDA IPC within
# a device). On TWO GPUs also: the whole backend_tests under mpirun -np 2, the ring-exchange benchmark (backend
# transports vs a bare cudaMemcpyPeerAsync loop, ring_exchange_table.py), and TP=2 overlap on/off measured with the
# copy_engine, sm_kernel and nccl ring exchange (validation cases tp2*, predicted with twinstep simulate and
# tabulated by validation_table.py). Writes everything under OUT/r and packs OUT/results.tgz.
# Usage: REV=<git revision> calibration/scripts/ring_exchange_h100x2.sh OUT. Every mpirun reads /dev/null.
set -u
OUT=$1
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, $MPI, $B, $T, results_in
results_in "$OUT" traces
GPUS=$(nvidia-smi -L | wc -l)
gpu_info "$R" topo
echo "== build $(date +%T) rev ${REV:-unknown}, $GPUS GPU(s)"
BENCH=ON build_gpu "$R/build.log" twinstep backend_tests ring_exchange_bench || exit 1
echo "== peer GPU tests: two ranks on $GPUS GPU(s) $(date +%T)"
timeout 120 $MPI -np 2 $B/tests/backend/backend_tests --order decl -d yes '[peer]' > "$R/peer_tests.log" 2>&1 < /dev/null
echo "backend_tests [peer] under mpirun -np 2: exit $?"; grep -E "passed|failed|FAILED|test cases" "$R/peer_tests.log" | tail -6
[ "$GPUS" -ge 2 ] || { echo "== one GPU: done $(date +%T)"; exit 0; }
echo "== all backend GPU tests, two ranks $(date +%T)"
timeout 200 $MPI -np 2 $B/tests/backend/backend_tests --order decl -d yes > "$R/gpu_tests.log" 2>&1 < /dev/null
echo "backend_tests under mpirun -np 2: exit $?"; grep -E "passed|failed|FAILED|test cases" "$R/gpu_tests.log" | tail -6
echo "== ring exchange vs cudaMemcpyPeerAsync $(date +%T)"
timeout 60 $B/bench/backend/ring_exchange_bench --mode bare -o "$R/ring_bare.json" > "$R/ring_bare.log" 2>&1 < /dev/null
echo "bare: exit $?"
timeout 120 $MPI -np 2 $B/bench/backend/ring_exchange_bench --mode backend -o "$R/ring_backend.json" \
  > "$R/ring_backend.log" 2>&1 < /dev/null
echo "backend: exit $?"
python3 calibration/scripts/ring_exchange_table.py "$R/ring_backend.json" "$R/ring_bare.json" 2>&1 | tee "$R/ring_table.md"
echo "== TP=2 overlap off/on, ring exchange over each transport $(date +%T)"
if grep -q H200 "$R/nvidia-smi.csv"; then SIM="--cluster h200x2-nvlink --gpus 2 --profile calibration/profiles/h200x2.json"
else SIM="--cluster dgx-h100 --gpus 2 --profile calibration/profiles/h100x1.json"; fi
FLAGS="--model calibration/validation/models/llama3-8b-4l.json --gpus 2 --tp 2 --sp --mbs 1 --gbs 2 --seq 4096 --no-distributed-optimizer"
for c in "tp2.off|" "tp2.on|--tp-comm-overlap --tp-ring-transport copy_engine" \
         "tp2sm.on|--tp-comm-overlap --tp-ring-transport sm_kernel" "tp2nccl.on|--tp-comm-overlap --tp-ring-transport nccl"; do
  name=${c%%|*}; extra=${c#*|}
  $T lower $FLAGS $extra -o "$R/s.json" > "$R/traces/$name.lower.log" 2>&1 < /dev/null \
    || { echo "$name: lower failed: $(tail -1 "$R/traces/$name.lower.log")"; continue; }
  timeout 75 $MPI -np 2 $T run "$R/s.json" -o "$R/traces/$name.trace.json" --warmup 2 --steps 5 --timeout-s 30 \
    > "$R/traces/$name.run.log" 2>&1 < /dev/null
  echo "$name: exit $? $(tail -1 "$R/traces/$name.run.log")"
  $T simulate "$R/s.json" $SIM --fidelity analytic -o "$R/traces/$name.pred.json" > "$R/traces/$name.pred.log" 2>&1 \
    < /dev/null || echo "$name: simulate failed: $(tail -1 "$R/traces/$name.pred.log")"
  python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['context']; print('  transport_ran:', c.get('transport_ran', '-'))" \
    "$R/traces/$name.trace.json" 2>/dev/null
done
for t in tp2sm tp2nccl; do  # each .on variant against the same .off run
  cp "$R/traces/tp2.off.trace.json" "$R/traces/$t.off.trace.json" 2>/dev/null
  cp "$R/traces/tp2.off.pred.json" "$R/traces/$t.off.pred.json" 2>/dev/null
done
python3 calibration/scripts/validation_table.py "$R/traces" 2>&1 | tee "$R/tp2_table.md"
echo "== done $(date +%T)"
