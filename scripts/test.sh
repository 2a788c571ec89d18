#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite on 2 worker processes.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec "$PY" -m pytest -n 2 --dist loadgroup -q "$@"
