# Sourced by run.sh and test.sh: make sure .venv/ exists and holds gradscope, its test and
# notebook extras (JupyterLab, ipywidgets) and a Jupyter kernel named "gradscope".
# Everything is written inside the project's .venv/ (the kernel too: --sys-prefix), nothing
# in your home folder. Torch is pinned for the machines this project is built and tested on;
# set GRADSCOPE_TORCH="torch==X torchvision==Y" to choose another build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_SPEC="${GRADSCOPE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp_of() { cat "$ROOT/pyproject.toml" "$ROOT/scripts/_venv.sh" | sha256sum | cut -c1-16; echo "$TORCH_SPEC"; }

# file:// package indexes named in this machine's pip configuration; pip notes each package
# they lack ("WARNING: Location 'file:///.../simple/NAME/' is ignored: ..."), which is harmless.
_local_indexes() {
  { "$VENV/bin/python" -m pip config list 2>/dev/null | sed -n "s/^[^=]*index-url='\(.*\)'$/\1/p"
    echo "${PIP_INDEX_URL:-} ${PIP_EXTRA_INDEX_URL:-}"; } | tr ' ' '\n' | grep '^file://' | sort -u || true
}

# pip install, quiet; only the "Location ... is ignored" notes about those configured local
# indexes are dropped, every other warning and error is shown and a failure stops the setup.
pip_q() {
  local pat="^\$" idx
  for idx in $(_local_indexes); do
    pat="$pat|^WARNING: Location '$(printf '%s' "${idx%/}" | sed 's/[][\.*^$+?(){}|]/\\&/g')/[^']*' is ignored: .*"
  done
  "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v -E "$pat" || true; } >&2
}

STAMP="$(stamp_of)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.gradscope-stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "setting up $VENV (torch: $TORCH_SPEC; a few minutes the first time) ..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  pip_q --upgrade pip || echo "(could not upgrade pip; going on with $("$VENV/bin/python" -m pip --version | cut -d' ' -f1-2))" >&2
  # shellcheck disable=SC2086
  pip_q $TORCH_SPEC
  # setuptools' note "Editable installation. Please be careful with folders ... same name"
  # (information, not a problem: here that folder is the package itself) is silenced alone.
  PYTHONWARNINGS="ignore:Editable installation" pip_q -e "$ROOT[test,notebooks,ray,tensorboard,lrfree]"
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name gradscope --display-name "Python 3 (gradscope)" >/dev/null
  old_kernel="${JUPYTER_DATA_DIR:-$HOME/.local/share/jupyter}/kernels/python3/kernel.json"
  if [ -f "$old_kernel" ] && grep -qF "$VENV/" "$old_kernel"; then
    echo "note: $old_kernel (written by an older scripts/_venv.sh) points into $VENV;" \
         "\`jupyter kernelspec remove python3\` gives you back your own default Python 3 kernel" >&2
  fi
  echo "$STAMP" > "$VENV/.gradscope-stamp"
fi
export MPLBACKEND="${MPLBACKEND:-Agg}"
