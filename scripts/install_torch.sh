#!/usr/bin/env bash
# Install torch into the given Python without ever pulling the multi-GB CUDA stack on a machine with no GPU.
# With an NVIDIA GPU: the registry's default (CUDA) build. Without one: a CPU build, taken from the configured
# package sources when they offer one, otherwise from PyTorch's CPU index.
set -euo pipefail
PY=${1:?usage: install_torch.sh PYTHON}
VERSION=${TORCH_VERSION:-2.13.0}
CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exec "$PY" -m pip install "torch==$VERSION"
fi
# Which build would the configured sources give? A local or mirrored "+cpu" wheel is what we want.
picked=$("$PY" -m pip install --dry-run --quiet --no-deps --report - "torch==$VERSION" 2>/dev/null |
  "$PY" -c 'import json,sys; r=json.load(sys.stdin)["install"]; print(r[0]["metadata"]["version"] if r else "")' || true)
if [[ "$picked" == *+cpu ]]; then
  exec "$PY" -m pip install "torch==$VERSION"
fi
exec "$PY" -m pip install "torch==$VERSION" --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
