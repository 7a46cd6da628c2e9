#!/usr/bin/env bash
# On two GPUs of one node (nvidia-h100-x2 or nvidia-h200-x2), issue 17 item 3: the copy engine's peer-copy bandwidth
# as a profile figure. Builds the backend, runs calibrate's quick suite on both GPUs (its p2p.copy_engine group times
# a bare cudaMemcpyPeerAsync from GPU 0 to GPU 1 at the TP ring exchange's chunk sizes; backend/peer_copy.cpp) and
# fits the profile, whose copy_engine section then holds the measured nvlink_efficiency (docs/calibration.md).
# Writes under OUT ($1, default $OUT): gpu.txt, build.log, calibrate.log, x2.raw.jsonl, profile_x2.json and
# copy_engine.txt (each chunk size: time, GB/s, fraction of the NVLink line rate; the fitted figure and its source).
set -uo pipefail
OUT=${1:-$OUT}
mkdir -p "$OUT"
source calibration/scripts/device_env.sh
nvidia-smi -L | tee "$OUT/gpu.txt"
[ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "needs two GPUs"; exit 1; }
REV=${REV:-unknown} build_gpu "$OUT/build.log" twinstep || exit 1
CLUSTER=dgx-h100
grep -q H200 "$OUT/gpu.txt" && CLUSTER=h200x2-nvlink
timeout 480 $MPI -np 2 build-gpu/cli/twinstep calibrate --suite quick --cluster "$CLUSTER" --warmup 2 --steps 5 \
  -o "$OUT/profile_x2.json" --raw "$OUT/x2.raw.jsonl" < /dev/null > "$OUT/calibrate.log" 2>&1
echo "calibrate exit $?"; grep -E "copy_engine|error|Error" "$OUT/calibrate.log" | head -20
python3 - "$OUT" "$CLUSTER" <<'PY' | tee "$OUT/copy_engine.txt"
import json, sys
out, cluster = sys.argv[1], sys.argv[2]
rows = []
for text in open(f"{out}/x2.raw.jsonl"):
    rec = json.loads(text)
    if rec.get("group") == "p2p.copy_engine":
        rows = rec["measurements"]
print(f"cluster {cluster}; p2p.copy_engine, cudaMemcpyPeerAsync GPU 0 -> GPU 1")
for m in rows:
    print(f"  {m['size'] / 2**20:8.1f} MiB  {m['value_s'] * 1e6:9.1f} us  {m['size'] / m['value_s'] / 1e9:7.1f} GB/s")
prof = json.load(open(f"{out}/profile_x2.json"))
print("profile copy_engine:", json.dumps(prof.get("copy_engine", "absent (default 376/450)")))
for f in prof.get("fits", []):
    if f["name"] == "copy_engine":
        print(f"fit: {f['points']} points, mean |err| {100 * f['mean_abs_rel_error']:.2f} %, "
              f"max {100 * f['max_abs_rel_error']:.2f} % ({f['note']})")
PY
