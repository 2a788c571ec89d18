#!/usr/bin/env bash
# Fetches timm's own model test file (tests/test_models.py, from the source distribution of the
# installed timm release) so tests/test_timm_upstream.py can run it against the kan_* models.
# Set-up time only: the package index is the one network access the test suite needs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
VERSION="$("$PY" -c 'import timm; print(timm.__version__)')"
DEST="$ROOT/.upstream/timm-$VERSION"
[ -f "$DEST/tests/test_models.py" ] && exit 0
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary :all: "timm==$VERSION" -d "$TMP"
mkdir -p "$DEST"
tar -xzf "$TMP"/timm-"$VERSION".tar.gz -C "$TMP"
cp -r "$TMP/timm-$VERSION/tests" "$DEST/"
