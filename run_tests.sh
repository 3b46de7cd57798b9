#!/usr/bin/env bash
# Create or update .venv with the project and its test extras, then run the whole suite.
#   ./run_tests.sh              everything (lint + tests)
#   ./run_tests.sh -k stamps    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/ensure_venv.sh
source scripts/ensure_venv.sh
# The SN page is tested in a real browser: Debian's chromium, driven by Playwright. Installed here
# when missing and we may (root with apt-get); otherwise those tests skip and say why.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium for the SN page's browser tests..." >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium; } >/dev/null 2>&1 ||
    echo "could not install chromium: the browser tests will be skipped" >&2
fi
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
