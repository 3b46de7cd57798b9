#!/usr/bin/env bash
# Create or update .venv with the project and its test extras, then run the whole suite.
#   ./run_tests.sh              everything (lint + tests)
#   ./run_tests.sh -k stamps    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/ensure_venv.sh
source scripts/ensure_venv.sh
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
