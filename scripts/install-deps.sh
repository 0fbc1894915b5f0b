#!/usr/bin/env bash
# Installs the Debian 12 packages coldfuse needs. Idempotent: installs only what is missing.
# Needs root (or sudo).
#   install-deps.sh [GROUP...]   GROUP: build (the default: build, test, run the demo),
#                                sanitizers (clang for `make test-asan` / `make test-tsan`),
#                                format (clang-format for `make format` / `make format-check`),
#                                containers (podman and docker-compose: build and run the images
#                                of docs/containers.md on a machine without Docker)
set -euo pipefail

GROUPS_WANTED=("$@")
[ ${#GROUPS_WANTED[@]} -eq 0 ] && GROUPS_WANTED=(build)

PKGS=()
for g in "${GROUPS_WANTED[@]}"; do
  case "$g" in
    # python3-grpcio and python3-protobuf: the Python client (python/) uses Debian's, the
    # same gRPC 1.51 and Protobuf 3.21 as the C++ build, whose protoc and
    # grpc_python_plugin generate its stubs; python3-pytest runs its tests;
    # python3-matplotlib draws the plots of `make experiment` (scripts/experiment_report.py).
    build) PKGS+=(
      build-essential cmake pkg-config ninja-build
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
      librocksdb-dev libabsl-dev libssl-dev openssl
      prometheus-cpp-dev libcpp-httplib-dev libjs-chart.js prometheus
      libtorch-dev libopenblas0-pthread
      libgtest-dev libgmock-dev
      procps util-linux bsdutils passwd
      chromium chromium-driver python3-selenium curl
      python3 python3-venv python3-sklearn python3-numpy python3-torch
      python3-yaml python3-grpcio python3-protobuf python3-pytest python3-matplotlib) ;;
    # The compiler, its ASan/UBSan/TSan runtimes (not a dependency of clang-14), and
    # llvm-symbolizer for readable stacks in the reports.
    # `time` gives scripts/fuzz.sh the CPU seconds each fuzzer used.
    sanitizers) PKGS+=(clang-14 libclang-rt-14-dev llvm-14 time) ;;
    format) PKGS+=(clang-format-14) ;;
    # podman builds the images (`podman build --format docker ...`) and serves a
    # Docker-compatible API that docker-compose (1.29) runs deploy/compose.yaml against.
    containers) PKGS+=(podman docker-compose) ;;
    *) echo "install-deps: unknown group '$g' (build, sanitizers, format, containers)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present (${GROUPS_WANTED[*]})"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python tools for tests, benchmarks and the Python client's examples, never for the
# C++ product: a venv over Debian's python3 (so Debian's numpy, torch, grpcio and
# protobuf are visible) with, from PyPI, safetensors (to check that exported bases load
# in the reference implementation) and transformers + accelerate (the Python client's
# Trainer callback, its test and python/examples; these versions work with Debian's
# torch 1.13).
if [[ " ${GROUPS_WANTED[*]} " == *" build "* ]]; then
  VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv"
  if ! "$VENV/bin/python" -c "import safetensors, numpy" 2>/dev/null; then
    echo "install-deps: creating $VENV (safetensors for tests)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "safetensors==0.8.0"
  fi
  if ! "$VENV/bin/python" -c "import transformers, accelerate" 2>/dev/null; then
    echo "install-deps: adding transformers to $VENV (the Python client's callback)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "transformers==4.44.2" \
      "accelerate==0.33.0"
  fi
fi
