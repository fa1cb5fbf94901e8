#!/usr/bin/env bash
# Install the package with its test dependencies (CPU build of torch) and run the suite;
# with no arguments, then check that the tests guarding key behaviours can fail (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
python3 -m pytest -q "$@"
if [ $# -eq 0 ]; then
    python3 scripts/mutation_check.py
fi
