#!/usr/bin/env bash
# Installs every Debian 12 package coldfuse needs to build, test and run its demo.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config ninja-build
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libabsl-dev libssl-dev openssl
  libtorch-dev libopenblas0-pthread
  libgtest-dev libgmock-dev
  python3 python3-venv python3-sklearn python3-numpy python3-torch
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python tools for tests and benchmarks, never for the product: a venv over Debian's
# python3 (so Debian's numpy and torch are visible) with safetensors from PyPI, used to
# check that exported bases load in the reference implementation.
VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$VENV/bin/python" -c "import safetensors, numpy" 2>/dev/null; then
  echo "install-deps: creating $VENV (safetensors for tests)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "safetensors==0.8.0"
fi
