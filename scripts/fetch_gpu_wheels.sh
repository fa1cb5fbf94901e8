#!/usr/bin/env bash
# Download, into .whl/, the wheels scripts/gpu_check.sh installs on a GPU machine without network
# (python3.12, x86_64, torch already there): optuna and fvcore with their dependencies that such a
# machine lacks. fvcore and iopath are published as source only: their wheels are built here.
#
#   bash scripts/fetch_gpu_wheels.sh            # then carry .whl/ with the checkout
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
PY=${PY:-python3}
mkdir -p "$DEST"
# Binary and pure-Python wheels for CPython 3.12 on manylinux x86_64, dependencies named one by one.
"$PY" -m pip download --quiet --dest "$DEST" --only-binary=:all: --no-deps \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    optuna alembic sqlalchemy greenlet mako colorlog yacs termcolor
# Source-only packages: build pure-Python wheels from their sdists.
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DEST" fvcore iopath
ls -1 "$DEST"
