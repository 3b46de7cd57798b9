#!/usr/bin/env bash
# Create or update .venv with the project and its test extras, then run the whole suite.
#   ./run_tests.sh              everything (lint + tests)
#   ./run_tests.sh -k stamps    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Reinstall only when setup.py changed since the last install (the stack is ~3 GB).
stamp=.venv/.stampflow-installed
if [ ! -f "$stamp" ] || ! cmp -s setup.py "$stamp"; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  cp setup.py "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
set +e
.venv/bin/python -m pytest -n 2 --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
