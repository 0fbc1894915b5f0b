#!/usr/bin/env bash
# Builds client/train against the CUDA LibTorch of a GPU machine's PyTorch and runs the
# trainer's tests there, so the CUDA path ("device chosen once") actually runs. For the
# lent GPU machines, which have PyTorch/CUDA but not Debian's -dev packages: the .debs
# it needs are unpacked from .gpu-deps/ (fetch them here with `apt-get download
# libprotobuf-dev libprotobuf32 protobuf-compiler libprotoc32 libabsl-dev libabsl20220623
# libssl-dev libssl3 libgtest-dev libgmock-dev googletest` into .gpu-deps/).
# Usage: OUT=/some/dir bench/gpu_train_check.sh
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
D=/tmp/cfdeps
mkdir -p "$D"
for f in .gpu-deps/*.deb; do dpkg -x "$f" "$D"; done
export LD_LIBRARY_PATH="$D/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cxx11abi", torch.compiled_with_cxx11_abi(), "gpu", torch.cuda.is_available())'
  g++ --version | head -1
} 2>&1 | tee "$OUT/machine.txt"
cmake -S . -B /tmp/cfbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOLDFUSE_TRAIN_ONLY=ON \
  -DCMAKE_PREFIX_PATH="$D/usr;$TORCH_PREFIX" \
  -DProtobuf_PROTOC_EXECUTABLE="$D/usr/bin/protoc" -DProtobuf_INCLUDE_DIR="$D/usr/include" \
  -DProtobuf_LIBRARY="$D/usr/lib/x86_64-linux-gnu/libprotobuf.so" \
  -DOPENSSL_ROOT_DIR="$D/usr" >"$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; exit 1; }
cmake --build /tmp/cfbuild -j"$(nproc)" --target train_test >"$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; exit 1; }
# Every trainer test, on the GPU (the trainer picks CUDA when torch sees one).
/tmp/cfbuild/client/train/train_test 2>&1 | tee "$OUT/train_test.log" | tail -40
