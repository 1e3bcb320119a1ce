#!/usr/bin/env bash
# featbench's one-call GPU smoke test (issue 20): bash benchmarks/gpu_smoke.sh [--cpu-dry-run]
#
# Writes one summary file, $OUT/gpu_smoke_summary.json (OUT: the device tool's folder; else ./smoke-out), and
# exits 0 only when every check passed. The checks are listed in benchmarks/gpu_smoke.py; they take about
# 5-9 minutes on one H100 and stop themselves at --budget seconds (default 540).
#
# The device image has torch but not open_clip_torch, ftfy or wcwidth. Bring their wheels in an ignored
# folder, .whl/ (in .gitignore), downloaded once on the machine that calls the device tool, in the repo root:
#
#   for w in open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
#   done
#
# Then one device-tool call (carry names the ignored folder; the command stays under 10 minutes):
#
#   run(command="bash benchmarks/gpu_smoke.sh", carry=[".whl"], timeout_s=600)
#
# and put $OUT/gpu_smoke_summary.json in the note. This script installs the carried wheels into /tmp/site
# (never into the image) and puts the repository first on PYTHONPATH (featbench is not installed there).
#
# --cpu-dry-run runs every check on the CPU at toy sizes, without wheels: a test of this script
# (tests/test_gpu_smoke.py), not of a GPU.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
dry=0
for arg in "$@"; do
  [ "$arg" = "--cpu-dry-run" ] && dry=1
done
if [ "$dry" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_smoke: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "$PY" benchmarks/gpu_smoke.py --out "${OUT:-$PWD/smoke-out}" "$@"
