#!/usr/bin/env bash
# Install (first time only) and run the whole test suite (what CI runs).
source "$(dirname "$0")/_venv.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
