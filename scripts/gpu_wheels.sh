#!/usr/bin/env bash
# Builds the git-ignored .whl/ that a device call carries (`carry: [".whl"]`), on a machine
# with PyPI: the wheels pinned in scripts/gpu_wheels.txt for Python 3.12 on x86_64 Linux,
# plus what the device script reads from ../shared, which does not travel with the repo:
#   .whl/extra/peer_iwae.py   the PyTorch / JAX peer benchmark (../shared/bench)
#   .whl/extra/mnist/         the official MNIST files (../shared/data/mnist), for the
#                             full-MNIST rows
# Then it measures what a device call sends (tracked and untracked-not-ignored files plus
# .whl/) against the tool's 64 MiB limit, and fails above it.
#   scripts/gpu_wheels.sh            SHARED=/path/to/shared scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# ../shared sits beside the main checkout; from a git worktree elsewhere, beside the
# repository that holds the worktree's git directory
SHARED=${SHARED:-$(cd "$(git rev-parse --git-common-dir)/../.." && pwd)/shared}

rm -rf .whl.new
mkdir -p .whl.new/extra/mnist
# the one dependency published only as a source archive: a pure-Python wheel, built here
"$PY" -m pip wheel -q --no-deps -w .whl.new/src "antlr4-python3-runtime==4.9.3"
# the oldest glibc a wheel is built for is preferred (the order given is pip's preference)
platforms=()
for p in manylinux_2_5 manylinux1 manylinux_2_17 manylinux2014 manylinux_2_24 \
         manylinux_2_26 manylinux_2_27 manylinux_2_28 manylinux_2_34; do
  platforms+=(--platform "${p}_x86_64")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 "${platforms[@]}" --find-links .whl.new/src \
  -d .whl.new -r <(sed 's/#.*//' scripts/gpu_wheels.txt | grep .)
rm -rf .whl.new/src
cp "$SHARED/bench/peer_iwae.py" .whl.new/extra/
cp "$SHARED"/data/mnist/*-ubyte.gz .whl.new/extra/mnist/
n=$(ls .whl.new/*.whl | wc -l)
want=$(sed 's/#.*//' scripts/gpu_wheels.txt | grep -c .)
[ "$n" -eq "$want" ] || { echo "gpu_wheels: $n wheels downloaded, $want pinned" >&2; exit 1; }
rm -rf .whl && mv .whl.new .whl

tree=$(git ls-files -co --exclude-standard -z | xargs -0 cat 2>/dev/null | wc -c)
carried=$(du -sb .whl | cut -f1)
total=$((tree + carried))
printf 'gpu_wheels: %d wheels; .whl/ %.1f MB (wheels %.1f MB, extra %.1f MB); working tree %.1f MB; together %.1f MiB of 64 MiB\n' \
  "$n" "$(echo "$carried/1000000" | bc -l)" \
  "$(du -cb .whl/*.whl | tail -1 | cut -f1 | awk '{print $1/1e6}')" \
  "$(du -sb .whl/extra | cut -f1 | awk '{print $1/1e6}')" \
  "$(echo "$tree/1000000" | bc -l)" "$(echo "$total/1048576" | bc -l)"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "gpu_wheels: over the device tool's 64 MiB: drop wheels the device has" >&2
  exit 1
fi
