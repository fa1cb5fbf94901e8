#!/usr/bin/env bash
# Install the package with its test dependencies (CPU build of torch) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
python3 -m pytest -q "$@"
