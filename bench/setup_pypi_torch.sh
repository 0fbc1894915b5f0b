#!/usr/bin/env bash
# Creates .venv-pypi-torch/ in the repo root: a venv from Debian's /usr/bin/python3 (no system
# site packages) with the newest PyTorch from PyPI, for bench/train_speed.py comparisons against
# Debian's python3-torch (1.13). Idempotent: does nothing when the pinned version is installed.
#
# About a CPU-only build: PyPI has no CPU-only torch wheel. The "+cpu" wheels live only on
# download.pytorch.org, which this machine cannot reach. PyPI's Linux wheel (about 540 MB) has
# hard dependencies on the CUDA 13 runtime wheels (cuda-toolkit[...], nvidia-cudnn-cu13,
# nvidia-nccl-cu13, nvidia-nvshmem-cu13, nvidia-cusparselt-cu13, cuda-bindings, triton).
# `pip install --no-deps torch` does not work: `import torch` then fails with
# "libcufile.so.0: cannot open shared object file", because libtorch_cuda.so is always loaded.
# So this installs the default wheel with its dependencies: the venv is about 5.4 GB on disk
# (torch/ 1.2 GB, nvidia/ 3.0 GB, triton/ 1.0 GB; about 3 GB downloaded).
# On a CPU-only machine the CUDA libraries are loaded but never used.
#
# Usage: bash bench/setup_pypi_torch.sh        (TORCH_VERSION=... to try another version)
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.15.0}"   # newest on PyPI when this was written
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-pypi-torch"
PY="$VENV/bin/python"

have_torch() {
  [ -x "$PY" ] && "$PY" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys, torch
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
EOF
}

if have_torch; then
  echo "torch $TORCH_VERSION already installed in $VENV"
else
  if [ ! -x "$PY" ]; then
    echo "creating $VENV (from /usr/bin/python3, no system site packages)"
    /usr/bin/python3 -m venv "$VENV"
  fi
  "$PY" -m pip install --disable-pip-version-check -q --upgrade pip
  # numpy: torch runs without it but warns; tensor <-> numpy conversions need it.
  "$PY" -m pip install --disable-pip-version-check "torch==$TORCH_VERSION" numpy
fi

"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "from", torch.__file__)
print("cmake prefix path (LibTorch):", torch.utils.cmake_prefix_path)
print("  -> Torch_DIR:", torch.utils.cmake_prefix_path + "/Torch")
print("_GLIBCXX_USE_CXX11_ABI:", int(torch._C._GLIBCXX_USE_CXX11_ABI))
print("cuda available:", torch.cuda.is_available())
EOF
du -sh "$VENV" 2>/dev/null | awk '{print "venv size: " $1}'
