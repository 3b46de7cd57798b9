# Sourced by run_local.sh and run_tests.sh: create .venv if missing and (re)install the project
# with its test extras whenever setup.py changed since the last install (the stack is ~3 GB).
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.stampflow-installed
if [ ! -f "$stamp" ] || ! cmp -s setup.py "$stamp"; then
  echo "Installing stampflow and its pinned stack into .venv (first time: a few minutes)..." >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  cp setup.py "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
