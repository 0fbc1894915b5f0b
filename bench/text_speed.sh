#!/usr/bin/env bash
# Fine-tuning steps/s of a MiniLM-L6 classifier (batch 32, sequence 128) on this machine's
# CPU: the coldfuse client's trainer (bench/text_train_speed.cc) built against Debian's
# LibTorch and, when built (make build-pypi-torch), against the PyPI wheel's; and the same
# model and batch in PyTorch (bench/train_speed.py) on Debian's python3-torch and on the
# newest PyPI torch (bench/setup_pypi_torch.sh). Runs the variants one after another,
# ROUNDS times in alternation, pausing between runs; appends one JSON line per run to $OUT.
# Usage: bench/text_speed.sh   (THREADS=2 ROUNDS=2 STEPS=20 OUT=bench/results/...jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-20}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
OUT=${OUT:-bench/results/$(date -u +%F)-cpu-text-train-speed.jsonl}
[ -s "$MODEL/model.safetensors" ] || bash scripts/prepare_minilm.sh "$MODEL"
variants=()
[ -x build/bench/text_train_speed ] && variants+=(cpp-debian)
[ -x build-pypi-torch/bench/text_train_speed ] && variants+=(cpp-pypi)
variants+=(py-debian)
[ -x .venv-pypi-torch/bin/python ] && variants+=(py-pypi)
run() {
  case $1 in
    cpp-debian) build/bench/text_train_speed --model="$MODEL" --threads="$THREADS" --steps="$STEPS" ;;
    cpp-pypi) build-pypi-torch/bench/text_train_speed --model="$MODEL" --threads="$THREADS" --steps="$STEPS" ;;
    py-debian) /usr/bin/python3 bench/train_speed.py --threads "$THREADS" --steps "$STEPS" --json | tail -1 ;;
    py-pypi) .venv-pypi-torch/bin/python bench/train_speed.py --threads "$THREADS" --steps "$STEPS" --json | tail -1 ;;
  esac
}
for r in $(seq "$ROUNDS"); do
  for v in "${variants[@]}"; do
    sleep 15  # let the previous run's threads and page-cache writes settle
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$(run "$v")
    echo "{\"variant\": \"$v\", \"round\": $r, \"load1_before\": $load, \"result\": $line}" | tee -a "$OUT"
  done
done
