#!/usr/bin/env bash
# The test suite against the lowest transformers that setup.py allows, in its own virtual environment.
#   bash scripts/test_floor.sh              # the whole suite
#   bash scripts/test_floor.sh tests/data   # any pytest arguments
# Families whose tiny checkpoint this transformers cannot build without torchvision are skipped, each
# with the reason (Idefics3 before 5.18).
set -euo pipefail
cd "$(dirname "$0")/.."
floor=$(sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' setup.py)
[ -n "$floor" ] || { echo "cannot read the transformers floor from setup.py" >&2; exit 1; }
venv="${FLOOR_VENV:-.venv-floor}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
bash scripts/install.sh dev
python -m pip install --disable-pip-version-check -q "transformers==$floor"
python -c "import transformers; print(f'[floor] transformers {transformers.__version__}')"
python -m pytest -q "$@"
