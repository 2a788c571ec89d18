#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite on 2 worker processes.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
# One torch/OpenMP thread per worker: 2 workers on 2 cores. Two threads each oversubscribe the cores
# (measured: tests/models + tests/test_export.py in 149 s against 105 s with one). The tests hold for any count.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m pytest -n 2 --dist loadgroup -q "$@"
