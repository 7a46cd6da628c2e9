#!/bin/sh
# Rewrites every golden output under tests/golden/ from the twinstep binary of BUILD_DIR (the commands live in
# tests/golden/CMakeLists.txt). Review `git diff tests/golden` before committing the result.
# usage: tests/golden/regen.sh BUILD_DIR
set -eu
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 BUILD_DIR (a configured and built twinstep build directory)" >&2
  exit 2
fi
TWINSTEP_UPDATE_GOLDEN=1 ctest --test-dir "$1" -R '^golden::' --output-on-failure
