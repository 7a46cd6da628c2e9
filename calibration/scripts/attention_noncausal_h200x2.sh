#!/usr/bin/env bash
# Two H200 (device kind nvidia-h200-x2): measures the suite's compute.attention_noncausal group (non-causal attention
# at the CP2 validation shapes, Llama-3-8B heads, fwd and bwd) on the backend, and nothing else of the committed raw
# file: `calibrate --resume` on a copy measures the groups that copy lacks, and only the new group's line is kept
# for the profile. calibration/validation/h200x2/REPORT.md (2026-12-07) says why: every attention probe of
# profiles/h200x2.raw.jsonl is causal, and the CP chunks' non-causal kernels are predicted 17-34 % too slow.
# Usage, from the repository root: calibration/scripts/attention_noncausal_h200x2.sh OUT
#   Results: OUT/attention_noncausal.raw.jsonl (the one group line to append to profiles/h200x2.raw.jsonl),
#   OUT/resumed.raw.jsonl (everything the resume measured), OUT/calibrate.log, OUT/build.log.
# Afterwards, here (no GPU): append the line, refit with the command of profiles/h200x2.fit.log's latest entry,
# re-predict with calibration/scripts/repredict.sh calibration/validation/h200x2 calibration/profiles/h200x2.json OUT2.
set -u
OUT=$1
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, build_gpu, $T, $MPI, revision
REV=$(revision)
echo "== build $(date +%T) revision $REV"
REV=$REV build_gpu "$OUT/build.log" twinstep || exit 1
cp calibration/profiles/h200x2.raw.jsonl "$OUT/resumed.raw.jsonl"
echo "== calibrate --resume $(date +%T)"
timeout 280 $MPI -np 2 "$T" calibrate --suite default --resume --raw "$OUT/resumed.raw.jsonl" \
  -o "$OUT/resumed.json" --steps 5 --warmup 2 > "$OUT/calibrate.log" 2>&1 < /dev/null
echo "calibrate exit $?"
python3 - "$OUT/resumed.raw.jsonl" "$OUT/attention_noncausal.raw.jsonl" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
keep = [l for l in lines if json.loads(l).get("group") == "compute.attention_noncausal"]
open(sys.argv[2], "w").write("".join(l + "\n" for l in keep))
for l in keep:
    for m in json.loads(l)["measurements"]:
        print(f"{m['probe']:60s} {m['value_s'] * 1e6:10.1f} us")
print(f"{len(keep)} group line(s) kept of {len(lines)}")
PY
