#!/usr/bin/env bash
# On one 8-GPU H200 node (device kind nvidia-h200-x8): run_calibration_hgx.sh with N = 8 (collectives over spans 2, 4
# and 8; co-runs at span 8).
# Usage: calibration/scripts/run_calibration_h200x8.sh OUT [default|quick] [PRIOR_RAW]
exec "$(dirname "$0")/run_calibration_hgx.sh" "$1" 8 "${@:2}"
