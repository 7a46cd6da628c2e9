#!/usr/bin/env bash
# Predicts every case of calibration/validation/h200x8/cases.txt without a GPU: predict_hgx.sh with that cases file.
# Usage: calibration/scripts/predict_h200x8.sh OUT [PROFILE] [TWINSTEP]
exec "$(dirname "$0")/predict_hgx.sh" "$1" calibration/validation/h200x8/cases.txt "${@:2}"
