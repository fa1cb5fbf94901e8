#!/usr/bin/env bash
# Install the package with its test dependencies (CPU build of torch) and run the suite;
# with no arguments, then check that the tests guarding key behaviours can fail (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
# The PostgreSQL tests start a real server (tests/services.py): install it when missing.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "scripts/test.sh: PostgreSQL (initdb) is missing: install the postgresql package" >&2
    fi
fi
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
# Formatter and linter first: a finding fails the run (line length 120, rules in pyproject.toml).
python3 -m ruff format --check .
python3 -m ruff check .
python3 -m pytest -q "$@"
if [ $# -eq 0 ]; then
    python3 scripts/mutation_check.py
fi
