#!/usr/bin/env bash
# Installs the Debian 12 packages twinstep builds with (the one list; .ci/run and README use this script).
# The CUDA backend additionally needs nvcc and NCCL (e.g. /usr/local/cuda); without them it is skipped.
set -euo pipefail
packages=(
  cmake ninja-build g++ clang pkg-config python3
  nlohmann-json3-dev libcli11-dev libeigen3-dev catch2   # parsing, CLI, fitting, tests
  libsimgrid-dev                                        # the flow-level network model (sim/engine)
  libopenmpi-dev openmpi-bin                            # backend bootstrap (mpirun, NCCL unique id)
  libsqlite3-dev                                        # import-trace: Nsight Systems SQLite exports
  clang-format clang-tidy                               # formatting and clang-tidy checks in .ci/run
)
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "install-deps: all ${#packages[@]} packages present"
