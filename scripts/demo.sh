#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job: train a KAN conv net on scikit-learn's bundled
# handwritten digits with a 2-process CPU accelerate launch, export it, reload it, print test accuracy.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec "$PY" -m kan_zoo.demo "$@"
