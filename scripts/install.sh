#!/usr/bin/env bash
# Install vift_plugin and everything it needs into the current Python environment.
#   bash scripts/install.sh          # the library, training, quantization and plotting extras
#   bash scripts/install.sh dev      # the same plus the test and lint tools
# PyTorch comes first: on a machine without an NVIDIA GPU the CPU build (torch==2.13.0), never the
# multi-GB CUDA wheels; with a GPU the default build. Set TORCH_SPEC to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
extras="train,quant,plot"
[ "${1:-}" = "dev" ] && extras="dev"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec="$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="torch"
  else
    spec="torch==2.13.0"
  fi
  echo "[install] installing PyTorch: $spec"
  "$PY" -m pip install --disable-pip-version-check -q "$spec"
fi
echo "[install] installing vift_plugin[$extras]"
"$PY" -m pip install --disable-pip-version-check -q -e ".[$extras]"
"$PY" -c "import torch, transformers, vift_plugin; print(f'[install] vift_plugin {vift_plugin.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
