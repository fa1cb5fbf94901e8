#!/usr/bin/env bash
# One call on a GPU machine: install what it lacks from carried wheels, record the machine,
# run the trainer benchmark (on Imagenette from the carried archive), the study benchmark and
# the default study under time limits, and leave every log and the run folder (as one archive,
# without weights) in $OUT.
#
#   OUT=/somewhere bash scripts/gpu_check.sh            # GPU (needs .whl/, .cache/data/imagenette2-128.tar.gz)
#   DEVICE=cpu PRESET=smoke OUT=/tmp/x DATA_DIR=../shared/data bash scripts/gpu_check.sh   # the same steps on a CPU
#
# Expects python3 with torch; optuna, fvcore and their dependencies come from .whl/*.whl
# (scripts/fetch_gpu_wheels.sh downloads them) into $SITE. Each step's failure is logged
# and the next one runs; summary.txt lists every step's exit status and seconds.
# Files left in $OUT (7, none in subfolders, each at most $MAX_BYTES, the largest named in
# summary.txt): env.txt, install.log, proxy.log, study.log, run.log, run.tar.gz, summary.txt.
# The run keeps no weights (--keep-weights none): the archive holds trials.csv, best.json,
# study.db and the report, tens of kB.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-}                  # empty: run picks the study for the device (imagenette on a GPU)
SPACE=${SPACE:-}                    # a search space file instead of a preset (the run step)
PROXY_DATA=${PROXY_DATA:-imagenette}  # the trainer benchmark's images: Imagenette, the GPU study's data
MAX_BYTES=${MAX_BYTES:-$((15 * 1024 * 1024))}  # a file handed back from a remote machine must stay under 16 MiB
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
step proxy "$OUT/proxy.log" timeout "$T_PROXY" "$PY" benchmarks/proxy_throughput.py --device "$DEVICE" \
    --data "$PROXY_DATA" --data-dir "$DATA_DIR" $PROXY_ARGS
# shellcheck disable=SC2086
step study "$OUT/study.log" timeout "$T_STUDY" "$PY" benchmarks/study_throughput.py --device "$DEVICE" \
    --data-dir "$DATA_DIR" ${PRESET:+--preset "$PRESET"} ${SPACE:+--space "$SPACE"} $STUDY_ARGS

# 5. The default study, stopped by Ctrl-C at its limit (it writes the report of what is done). No weights:
# one Imagenette winner's file is 16-27 MB compressed, too large to come back.
step run "$OUT/run.log" timeout --signal=INT --kill-after=30 "$T_RUN" "$PY" -m scaling_search.cli run --budget 2x \
    --data-dir "$DATA_DIR" --device "$DEVICE" ${PRESET:+--preset "$PRESET"} ${SPACE:+--space "$SPACE"} \
    --keep-weights none --out "$OUT/run"
if [ -d "$OUT/run" ]; then
    tar -czf "$OUT/run.tar.gz" --exclude='run/weights' -C "$OUT" run && rm -rf "$OUT/run"
    echo "run folder: run.tar.gz (no weights)" >>"$SUMMARY"
fi

# 6. Every file small enough to come back: a log over the limit keeps its end; the largest is named.
for f in "$OUT"/*; do
    size=$(stat -c %s "$f")
    if [ "$size" -gt "$MAX_BYTES" ] && [ "${f%.log}" != "$f" ]; then
        tail -c "$MAX_BYTES" "$f" >"$f.tail" && mv "$f.tail" "$f"
        echo "$(basename "$f"): cut to its last $MAX_BYTES bytes (was $size)" >>"$SUMMARY"
    fi
done
largest=$(ls -S "$OUT" | head -n 1)
size=$(stat -c %s "$OUT/$largest")
verdict=$([ "$size" -le "$MAX_BYTES" ] && echo "within" || echo "OVER")
echo "files: $(ls "$OUT" | wc -l); largest: $largest, $size bytes ($verdict the $MAX_BYTES-byte limit)" >>"$SUMMARY"
cat "$SUMMARY"
