#!/usr/bin/env bash
# One GPU: re-measures the named calibration groups of the committed one-GPU raw file with the kernels the backend
# runs today, keeping every other group as it was measured (`calibrate --resume` measures only the groups missing
# from the raw file). The refit is deterministic and runs here afterwards (calibration/profiles/README.md, the
# session's command), so this script stops at the raw file.
# Usage, from the repository root: calibration/scripts/remeasure_groups_1gpu.sh OUT GROUP... (e.g. compute.grouped_gemm)
#   Results: OUT/G.raw.jsonl (G = h100x1 on an H100, h200x1 on an H200), OUT/calibrate.log, OUT/build.log.
set -u
OUT=$1
shift
[ $# -gt 0 ] || { echo "usage: $0 OUT GROUP..." >&2; exit 2; }
mkdir -p "$OUT"
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
  *H100*) G=h100x1 ;; *H200*) G=h200x1 ;; *) echo "no H100 or H200 here" >&2; exit 2 ;;
esac
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, build_gpu, $T, revision
REV=$(revision)
echo "== build $(date +%T) revision $REV"
REV=$REV build_gpu "$OUT/build.log" twinstep || exit 1
python3 - "calibration/profiles/$G.raw.jsonl" "$OUT/$G.raw.jsonl" "$@" <<'PY'
import json, sys
src, dst, groups = sys.argv[1], sys.argv[2], set(sys.argv[3:])
lines = open(src).read().splitlines()
kept = [l for l in lines if json.loads(l).get("group") not in groups]
open(dst, "w").write("\n".join(kept) + "\n")
print(f"raw: {len(lines) - len(kept)} line(s) of {sorted(groups)} dropped for re-measurement")
PY
echo "== calibrate $* $(date +%T)"
timeout 300 "$T" calibrate --suite default --resume --raw "$OUT/$G.raw.jsonl" -o "$OUT/$G.device.json" \
  --steps 5 --warmup 2 > "$OUT/calibrate.log" 2>&1 < /dev/null
echo "calibrate exit $?"; grep -E "^calibrate \[" "$OUT/calibrate.log" | grep -v skipped | head -8
