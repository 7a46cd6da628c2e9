#!/usr/bin/env bash
# One H100 (nvidia-h100-x1), one device call (<= 6 minutes with the build on a fresh machine): issue 17, the MoE
# grouped GEMM as Transformer Engine's GroupedLinear runs it (backend/grouped_gemm.hpp: per-group cuBLAS GEMMs over
# TE's 4 compute streams, forked from and joined to the op's stream). Builds the CLI and backend_tests, runs the two
# grouped-GEMM GPU tests (results against a host reference and the one-stream loop; an op's record spanning all its
# groups), then run_reference_h100x1.sh on moe_s4096 with the H100 profile and the backend-vs-PyTorch table by op
# class (torch_gap_table.py: the "grouped gemm" row was 11.97 ms backend / 6.63 ms torch._grouped_mm before).
#
# Usage, from the repository root: calibration/scripts/grouped_gemm_h100x1.sh OUT
# Writes OUT/tests.log, OUT/run.log, OUT/table.md, OUT/gap_table.md and OUT/grouped.tgz (the case's r/ folder:
# schedule, backend trace, torch trace, imports, compares).
set -u
OUT=$1
mkdir -p "$OUT"
W=$(mktemp -d)
. "$(dirname "$0")/device_env.sh"  # NVLS off, MPI as root, torch's NCCL/cuBLAS, build_gpu, revision
START=$SECONDS
REV=$(revision)
REV=$REV build_gpu "$OUT/build.log" twinstep backend_tests > "$OUT/run.log" 2>&1 || { cat "$OUT/run.log"; exit 1; }
echo "build (revision $REV) done after $((SECONDS - START)) s" >> "$OUT/run.log"
timeout 120 build-gpu/tests/backend/backend_tests "backend::grouped_gemm*,*grouped-GEMM op*" --durations yes \
  > "$OUT/tests.log" 2>&1
echo "grouped-GEMM tests exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
export PROFILE=calibration/profiles/h100x1.json STEPS=5 BSTEPS=3 TORCH_FLAGS=--fuse-elementwise
LEFT=$((340 - (SECONDS - START)))
timeout "$LEFT" bash calibration/scripts/run_reference_h100x1.sh "$W" moe_s4096 >> "$OUT/run.log" 2>&1
echo "run_reference exit $? after $((SECONDS - START)) s" >> "$OUT/run.log"
python3 calibration/reference/reference_table.py "$W"/r/*/ > "$OUT/table.md" 2>&1
python3 calibration/scripts/torch_gap_table.py "$W/r" moe_s4096 > "$OUT/gap_table.md" 2>&1
[ -s "$W/r/moe_s4096/backend.json" ] &&
  python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['context']; print('grouped_gemm:', c.get('grouped_gemm'))" \
    "$W/r/moe_s4096/backend.json" >> "$OUT/run.log" 2>&1
tar czf "$OUT/grouped.tgz" -C "$W" --exclude r/models r
cat "$OUT/tests.log" | tail -5
cat "$OUT/table.md" "$OUT/gap_table.md"
