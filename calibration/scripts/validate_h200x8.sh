#!/usr/bin/env bash
# On one 8-GPU H200 node (device kind nvidia-h200-x8): validate_hgx.sh with N = 8 and
# calibration/validation/h200x8/cases.txt.
# Usage: REV=<git revision> calibration/scripts/validate_h200x8.sh OUT [PROFILE8]
exec "$(dirname "$0")/validate_hgx.sh" "$1" 8 calibration/validation/h200x8/cases.txt "${@:2}"
