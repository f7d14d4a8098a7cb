# Sourced by run.sh and test.sh: make sure .venv/ exists and holds gradscope and its needs.
# Torch is pinned for the machines this project is built and tested on; set
# GRADSCOPE_TORCH="torch==X torchvision==Y" to choose another build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_SPEC="${GRADSCOPE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
PY="${PYTHON:-python3}"
stamp_of() { cat "$ROOT/pyproject.toml" "$ROOT/scripts/_venv.sh" | sha256sum | cut -c1-16; echo "$TORCH_SPEC"; }
STAMP="$(stamp_of)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.gradscope-stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "setting up $VENV (torch: $TORCH_SPEC) ..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
  "$VENV/bin/python" -m ipykernel install --user --name python3 >/dev/null 2>&1 || true
  echo "$STAMP" > "$VENV/.gradscope-stamp"
fi
export MPLBACKEND="${MPLBACKEND:-Agg}"
