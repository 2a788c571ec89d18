# Sourced by the other scripts: creates .venv on first use and installs kan_zoo with its test extra.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KAN_ZOO_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Re-install only when pyproject.toml changed since the last install.
STAMP="$VENV/.kan_zoo_installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
    touch "$STAMP"
fi
PY="$VENV/bin/python"
bash "$ROOT/scripts/fetch_timm_tests.sh" "$PY"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
