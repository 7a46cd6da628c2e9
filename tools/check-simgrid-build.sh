#!/usr/bin/env bash
# Checks that the flow model (the only SimGrid user: sim/engine/flow_model.cpp, plus sim/simulate.cpp's guards)
# compiles against the SimGrid headers under PREFIX/include, with the project's warning flags (warnings are errors,
# so a deprecated SimGrid call fails too). docs/performance.md ("SimGrid releases") records what was checked.
#
#   tools/check-simgrid-build.sh PREFIX            compile only (-fsyntax-only): needs PREFIX/include only
#   tools/check-simgrid-build.sh --full PREFIX     also configures a build against PREFIX (pkg-config through
#                                                  CMAKE_PREFIX_PATH), builds sim_tests and runs the flow tests:
#                                                  needs a real install (headers, libsimgrid, simgrid.pc)
#
# PREFIX is where SimGrid was installed (/usr for Debian's libsimgrid-dev). Exit status 0 when everything passed.
set -euo pipefail

full=0
if [ "${1:-}" = "--full" ]; then
  full=1
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--full] PREFIX   (e.g. $0 /usr, or $0 --full /opt/simgrid-4.1)" >&2
  exit 2
fi
prefix=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
version_h="$prefix/include/simgrid/version.h"
if [ ! -f "$version_h" ]; then
  echo "check-simgrid-build: $version_h not found: PREFIX must hold include/simgrid (a SimGrid install)" >&2
  exit 2
fi
version=$(awk '/#define SIMGRID_VERSION_(MAJOR|MINOR|PATCH) /{printf "%s%s", sep, $3; sep="."}' "$version_h")
echo "check-simgrid-build: SimGrid $version headers in $prefix/include"

cxx=${CXX:-c++}
# The project's flags (cmake/TwinstepHelpers.cmake with TWINSTEP_WERROR=ON); SimGrid's headers are system headers
# there too (an imported pkg-config target), so -isystem, except for the compiler's own system directories (an
# -isystem /usr/include would hide libstdc++'s #include_next <stdlib.h>).
flags=(-std=c++20 -Wall -Wextra -Wpedantic -Wshadow -Werror -fsyntax-only -I "$root" -DTWINSTEP_HAVE_SIMGRID=1)
case "$prefix" in
  /usr | /usr/local) ;;
  *) flags+=(-isystem "$prefix/include") ;;
esac
status=0
for src in sim/engine/flow_model.cpp sim/simulate.cpp; do
  if "$cxx" "${flags[@]}" "$root/$src"; then
    echo "check-simgrid-build: $src: compiles"
  else
    echo "check-simgrid-build: $src: FAILED against SimGrid $version" >&2
    status=1
  fi
done
if [ $status -ne 0 ] || [ $full -eq 0 ]; then
  exit $status
fi

build="$root/build-simgrid-$version"
echo "check-simgrid-build: full check in $build"
cmake -S "$root" -B "$build" -G Ninja -DTWINSTEP_WERROR=ON -DTWINSTEP_BACKEND=OFF -DTWINSTEP_SIMGRID=ON \
  -DCMAKE_PREFIX_PATH="$prefix" -DTWINSTEP_ENABLE_BENCH=OFF
ninja -C "$build" -j2 sim_tests
# Each flow test runs in its own process (one SimGrid engine per process).
ctest --test-dir "$build" -R 'sim::flow' --output-on-failure -j2
