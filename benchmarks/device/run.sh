#!/usr/bin/env bash
# claybot's GPU run kit, on the device machine: install the wheels carried in .whl/ (benchmarks/device/prepare.sh
# fetched them), then run every GPU benchmark, each under its own time budget, figures as JSON into $OUT.
#
#   benchmarks/device/run.sh                    # on the device: device tool run, carry [".whl"]
#   benchmarks/device/run.sh --smoke            # anywhere: the same steps on the tiny models on the CPU, no wheels
#   benchmarks/device/run.sh --only compile --budget compile=300     # a rerun of one step (kit.py --help)
#
# Output ($OUT, default out/device): run.log, run.json (machine, versions, each step's outcome), and one JSON file
# per step: build, speed, switches, compile, guides, animate. At most 8 files, as the device tool brings back.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/device}
SMOKE=0
for arg in "$@"; do [ "$arg" = "--smoke" ] && SMOKE=1; done
mkdir -p "$OUT"

kit() {
    local py started
    if [ "$SMOKE" = 1 ]; then
        py=${PYTHON:-.venv/bin/python}
        [ -x "$py" ] || py=python3
    else
        py=python3  # the device's, with torch
    fi
    "$py" benchmarks/device/kit.py --plan "$@" || return
    started=$SECONDS
    if [ "$SMOKE" = 1 ]; then
        echo "install: smoke: the local environment ($py), no wheels"
    else
        compgen -G ".whl/*.whl" >/dev/null || {
            echo "run.sh: no wheels in .whl/: run benchmarks/device/prepare.sh here first and carry .whl"; return 2; }
        timeout 40 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || { echo "run.sh: installing the wheels failed"; return 2; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        # Fail in seconds, with the name of what is missing, rather than in every step.
        "$py" -c "import compel, diffusers, pydantic, tomlkit, onnxruntime, cv2, transformers, peft" || {
            echo "run.sh: a package claybot needs is missing (see above)"; return 2; }
    fi
    echo "install: $((SECONDS - started)) s"
    "$py" benchmarks/device/kit.py --out "$OUT" --installed-in "$((SECONDS - started))" --planned "$@"
}

kit "$@" 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
