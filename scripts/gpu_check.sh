#!/usr/bin/env bash
# One call on a GPU machine: install what it lacks from carried wheels, record the machine,
# run the trainer benchmark, the study benchmark and the default study under time limits,
# and leave every log and the run folder (as one archive) in $OUT.
#
#   OUT=/somewhere bash scripts/gpu_check.sh                               # GPU (needs .whl/, .cache/data/)
#   DEVICE=cpu PRESET=smoke OUT=/tmp/x DATA_DIR=../shared/data bash scripts/gpu_check.sh   # the same steps on a CPU
#
# Expects python3 with torch; optuna, fvcore and their dependencies come from .whl/*.whl
# (scripts/fetch_gpu_wheels.sh downloads them) into $SITE. Each step's failure is logged
# and the next one runs; summary.txt lists every step's exit status and seconds.
# Files left in $OUT (at most 8, none in subfolders): env.txt, install.log, proxy.log,
# study.log, run.log, run.tar.gz, summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-}                  # empty: run picks the study for the device (imagenette on a GPU)
OUT=${OUT:-/tmp/gpu-check}
DATA_DIR=${DATA_DIR:-.cache/data}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}
# Time limits in seconds (together under 9 minutes; the study is stopped with Ctrl-C at its limit,
# so it still writes the report of what it finished).
T_INSTALL=${T_INSTALL:-45}
T_PROXY=${T_PROXY:-75}
T_STUDY=${T_STUDY:-120}
T_RUN=${T_RUN:-240}
if [ "$DEVICE" = cpu ]; then
    PROXY_ARGS=${PROXY_ARGS:---images 256 --repeats 1 --warmup 0}
    STUDY_ARGS=${STUDY_ARGS:---trials 2 --train-images 128 --test-images 128}
else
    PROXY_ARGS=${PROXY_ARGS:---repeats 2}
    STUDY_ARGS=${STUDY_ARGS:---trials 8}
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

step() {  # step NAME LOG COMMAND...: run, log stdout and stderr, note status and seconds
    local name=$1 log=$2
    shift 2
    local start=$SECONDS
    "$@" >>"$log" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - start)) s" | tee -a "$SUMMARY"
    return 0
}

# 1. What the machine lacks, from the carried wheels (pure Python or cp312 builds).
if compgen -G ".whl/*.whl" >/dev/null; then
    step install "$OUT/install.log" timeout "$T_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE:$PWD"
else
    echo "no .whl/*.whl here: using the packages already installed" | tee -a "$OUT/install.log" "$SUMMARY"
    export PYTHONPATH="$PWD"
fi

# 2. The machine and the software the figures belong to.
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) cores; $(uptime)"
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not present"; fi
    "$PY" -c 'import sys, platform; print("python", platform.python_version())'
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
    "$PY" -c 'import optuna; print("optuna", optuna.__version__)'
    "$PY" -c 'import fvcore; print("fvcore", getattr(fvcore, "__version__", "present"))'
    "$PY" -m scaling_search.cli --version
} >"$OUT/env.txt" 2>&1
echo "env: recorded in env.txt" >>"$SUMMARY"

# 3. Trainer against the DataLoader loop.  4. The study's throughput at 1 job and at the chosen count.
# shellcheck disable=SC2086  # the *_ARGS are word lists
step proxy "$OUT/proxy.log" timeout "$T_PROXY" "$PY" benchmarks/proxy_throughput.py --device "$DEVICE" $PROXY_ARGS
# shellcheck disable=SC2086
step study "$OUT/study.log" timeout "$T_STUDY" "$PY" benchmarks/study_throughput.py --device "$DEVICE" \
    --data-dir "$DATA_DIR" ${PRESET:+--preset "$PRESET"} $STUDY_ARGS

# 5. The default study, stopped by Ctrl-C at its limit (it writes the report of what is done).
step run "$OUT/run.log" timeout --signal=INT --kill-after=30 "$T_RUN" "$PY" -m scaling_search.cli run --budget 2x \
    --data-dir "$DATA_DIR" --device "$DEVICE" ${PRESET:+--preset "$PRESET"} --out "$OUT/run"
if [ -d "$OUT/run" ]; then
    tar -czf "$OUT/run.tar.gz" -C "$OUT" run && rm -rf "$OUT/run"
    echo "run folder: run.tar.gz" >>"$SUMMARY"
fi
cat "$SUMMARY"
