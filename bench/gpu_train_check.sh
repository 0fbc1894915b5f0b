#!/usr/bin/env bash
# Builds client/train against the CUDA LibTorch of a GPU machine's PyTorch and runs the
# trainers' tests and the text fine-tuning benchmark there, so the CUDA path ("device
# chosen once", bf16 autocast) actually runs. For the lent GPU machines, which have
# PyTorch/CUDA but not Debian's -dev packages: the .debs it needs are unpacked from
# .gpu-deps/ (fetch them here with `apt-get download libprotobuf-dev libprotobuf32
# protobuf-compiler libprotoc32 libabsl-dev libabsl20220623 libssl-dev libssl3
# libgtest-dev libgmock-dev googletest` into .gpu-deps/).
# MODEL_DIR: a MiniLM folder for the benchmark; without model.safetensors (too large to
# carry) the benchmark uses random weights of the same shape, which trains at the same
# speed: `mkdir -p models/minilm-noweights && cp models/all-MiniLM-L6-v2/{config.json,
# vocab.txt,tokenizer.json,tokenizer_config.json} models/minilm-noweights/`.
# Usage: OUT=/some/dir MODEL_DIR=models/minilm-noweights [TORCH_MODE=wheel] bench/gpu_train_check.sh
#        (RUN_TESTS=0 / RUN_BENCH=0 skip those parts; TASK_DIR=... adds a real task)
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
MODEL_DIR=${MODEL_DIR:-models/minilm-noweights}
STEPS=${STEPS:-60}
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
# TORCH_MODE=cmake: the wheel's CMake config (find_package, needs a CUDA toolkit);
# TORCH_MODE=wheel: COLDFUSE_TORCH_ROOT + COLDFUSE_TORCH_CUDA (the wheel's libraries only).
TORCH_MODE=${TORCH_MODE:-cmake}
TORCH_ROOT=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
EXTRA=()
[ "$TORCH_MODE" = wheel ] && EXTRA=(-DCOLDFUSE_TORCH_ROOT="$TORCH_ROOT" -DCOLDFUSE_TORCH_CUDA=ON)
cmake -S . -B /tmp/cfbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOLDFUSE_TRAIN_ONLY=ON \
  "${EXTRA[@]}" -DCMAKE_PREFIX_PATH="$D/usr;$TORCH_PREFIX" \
  -DProtobuf_PROTOC_EXECUTABLE="$D/usr/bin/protoc" -DProtobuf_INCLUDE_DIR="$D/usr/include" \
  -DProtobuf_LIBRARY="$D/usr/lib/x86_64-linux-gnu/libprotobuf.so" \
  -DOPENSSL_ROOT_DIR="$D/usr" >"$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; exit 1; }
cmake --build /tmp/cfbuild -j"$(nproc)" \
  --target text_train_speed $( [ "${RUN_TESTS:-1}" = 1 ] && echo train_test encoder_test text_trainer_test ) \
  >"$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; exit 1; }
# Every trainer test; the trainers pick CUDA when torch sees one (the text trainer's
# CUDA test runs only here).
if [ "${RUN_TESTS:-1}" = 1 ]; then
  for t in train_test encoder_test text_trainer_test; do
    /tmp/cfbuild/client/train/$t 2>&1 | tee "$OUT/$t.log" | tail -4
  done
  grep -h "cuda:0" "$OUT/text_trainer_test.log" || true
fi
# A real task when given (TASK_DIR with train.csv and test.csv, and a MODEL_DIR with the
# pretrained weights, e.g. MiniLM saved as BF16 to fit the carry limit): the loss falls and
# the test accuracy rises on CUDA under bf16 autocast.
if [ -n "${TASK_DIR:-}" ]; then
  /tmp/cfbuild/bench/text_train_speed --model="$MODEL_DIR" --device=cuda --bf16=1 \
    --train="$TASK_DIR/train.csv" --test="$TASK_DIR/test.csv" --warmup=5 --steps="$STEPS" |
    tee -a "$OUT/text_train_real_task.jsonl"
fi
[ "${RUN_BENCH:-1}" = 1 ] || exit 0
# MiniLM-L6 size, batch 32, sequence 128: bf16 autocast, then F32.
for bf16 in 1 0; do
  /tmp/cfbuild/bench/text_train_speed --model="$MODEL_DIR" --device=cuda --bf16=$bf16 \
    --warmup=5 --steps="$STEPS" | tee -a "$OUT/text_train_speed.jsonl"
done
# The same model and batch in PyTorch on the same GPU, if the helper script is there.
if [ -f bench/train_speed.py ] && grep -q -- "--device" bench/train_speed.py; then
  for bf16 in 1 0; do
    python3 bench/train_speed.py --device cuda --bf16 $bf16 --warmup 5 --steps "$STEPS" --json \
      2>&1 | tail -1 | tee -a "$OUT/train_speed_python.jsonl" || true
  done
fi
