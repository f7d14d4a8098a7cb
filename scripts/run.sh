#!/usr/bin/env bash
# Install (first time only) and run the main job: `gradscope profile` on the built-in digits data.
# Extra arguments go to `gradscope profile`, e.g. scripts/run.sh --rounds 8 --out runs/mine
source "$(dirname "$0")/_venv.sh"
cd "$ROOT"
exec "$VENV/bin/gradscope" profile "$@"
