#!/usr/bin/env bash
# The per-rank plans over real MPI processes: `mpirun -np 2` runs `verify --ranks 2`, each process checking its
# rows of the gradients, loss and states against one process on the global batch; a job of another size than
# `--ranks` is the coded error ssl::ranks::mismatch. Usage: tests/mpi.sh PATH/TO/ssl-lang (built with --features mpi).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: tests/mpi.sh PATH/TO/ssl-lang}
# CI runs as root, which OpenMPI refuses unless told; two ranks may exceed the cores it counts.
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2)
"${mpi[@]}" "$bin" verify --ranks 2 objectives/*.ssl examples/*.ssl
set +e
out=$("${mpi[@]}" "$bin" --format json verify --ranks 3 objectives/unigrad.ssl 2>&1)
code=$?
set -e
if [ "$code" -eq 0 ] || ! grep -q 'ssl::ranks::mismatch' <<<"$out"; then
  echo "expected ssl::ranks::mismatch from a 2-process job asked for 3 ranks, got exit $code:" >&2
  echo "$out" >&2
  exit 1
fi
echo "mpi: 2 processes agree with one; a job of the wrong size is refused"
