#!/usr/bin/env bash
# The GPU check in one command (see scripts/gpu_check.py for the steps and what each records):
#   bash scripts/gpu_check.sh                       # one CUDA GPU, at most 8 minutes; gpu_check/<date>_<time>/
#   bash scripts/gpu_check.sh --out DIR             # summary.json, summary.md and logs/ under DIR
#   bash scripts/gpu_check.sh --dry-run             # CPU: the same steps at tiny sizes
# Works from an installed vift_plugin (bash scripts/install.sh) or straight from the checkout.
#
# On a lent machine without a package index (the `device` tool): download the wheels the image lacks
# into .whl/ first (pip download --no-deps -d .whl bitsandbytes datasets dill multiprocess
# transformers==<tested version>; the machine's torch is kept), carry .whl, and run:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=$PWD:/tmp/site && PYTHON=python3 bash scripts/gpu_check.sh --out /tmp/gc;
#   cp /tmp/gc/summary.* $OUT/
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import vift_plugin" >/dev/null 2>&1; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" scripts/gpu_check.py "$@"
