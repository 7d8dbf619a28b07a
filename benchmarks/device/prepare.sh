#!/usr/bin/env bash
# Fetch, on an ordinary machine with pip access, the wheels claybot needs on the device machine and that its image
# lacks (CPython 3.12, manylinux x86-64) into .whl/ (ignored by git), check they are complete, and print their sizes.
# Then the device tool's run carries .whl and calls benchmarks/device/run.sh (README: "GPU run kit").
#
#   benchmarks/device/prepare.sh          # from the repository root or anywhere; makes .venv first if absent
set -euo pipefail
cd "$(dirname "$0")/../.."
WHL=${WHL:-.whl}
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "prepare: no $PY yet: make install (the versions to carry are the ones the project installs)"
    make install
fi

# The device's own pip flags (the device tool's README): pip matches manylinux_2_N exactly, so name several N.
PLATFORMS=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
           manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")

echo "prepare: deciding what the device lacks (pyproject.toml's needs, versions as installed in $PY)"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
"$PY" benchmarks/device/wheels.py plan > "$SCRATCH/plan"  # exits non-zero when a need is not installed here
mapfile -t WANT < "$SCRATCH/plan"
[ "${#WANT[@]}" -gt 0 ] || { echo "prepare: nothing to carry"; exit 0; }

# A fresh folder: a stale second version of a package would stop the whole install on the device.
rm -rf "$WHL"
mkdir -p "$WHL"
echo "prepare: downloading ${#WANT[@]} wheels into $WHL/"
# (this machine's pip may name local indexes that lack a package: those warnings are noise here)
"$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$WHL" "${WANT[@]}" 2> >(grep -v "^WARNING: Location" >&2)

echo "prepare: checking that every need is covered, one version each, within the size limit"
"$PY" benchmarks/device/wheels.py check "$WHL"

# The install the device will run, here into a scratch folder for Python 3.12 (tags and file clashes checked).
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade "${TARGET[@]}" \
    --target "$SCRATCH/site" "$WHL"/*.whl
echo "prepare: the wheels install together for CPython 3.12 ($(ls "$SCRATCH/site" | wc -l) entries)"
echo "prepare: done. Device run: carry [\".whl\"], command: benchmarks/device/run.sh"
