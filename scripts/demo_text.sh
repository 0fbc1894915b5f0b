#!/usr/bin/env bash
# ColD Fusion over a real pretrained transformer on CPU: base v0 is all-MiniLM-L6-v2 (a
# 6-layer BERT from PyPI, scripts/prepare_minilm.sh); two contributors fine-tune it on
# real sentiment data (movie-review and tweet snippets, scripts/prepare_text_task.sh) and
# push only the encoder; the server fuses them into v1. A third, unseen task (New York
# Times snippets) scores v0 and v1 as starting points with a few-shot fine-tune.
# Usage: scripts/demo_text.sh [BUILD_DIR]   (STEPS=60 optimizer steps per contributor)
# PYTHON=1 (make demo-python): the second contributor is a Python one instead,
# transformers.Trainer with the coldfuse callback (python/examples/finetune_minilm.py).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
STEPS=${STEPS:-60}
SHOTS=${SHOTS:-64}
OUT=demo-text-run
TASKS=(movie-sentiment tweet-sentiment)
UNSEEN=nyt-sentiment
MODEL=models/all-MiniLM-L6-v2
CLIENT_BIN=$BUILD/client/daemon/coldfuse-client
CTL_BIN=$BUILD/ctl/coldfusectl

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$OUT"
mkdir -p "$OUT/logs"
echo "== preparing all-MiniLM-L6-v2 and the sentiment tasks (from PyPI; see docs/encoders.md)"
bash scripts/prepare_minilm.sh "$MODEL" >"$OUT/logs/prepare.log"
for t in "${TASKS[@]}" "$UNSEEN"; do
  [ -s "models/data/$t/train.csv" ] || bash scripts/prepare_text_task.sh "models/data/$t" "$t" >>"$OUT/logs/prepare.log"
done

echo "== starting coldfused (plaintext on loopback; data folder $OUT/server-data)"
"$BUILD/server/coldfused" --data_dir="$OUT/server-data" --listen=127.0.0.1:0 --insecure \
  --port_file="$OUT/port" --min_contributions=${#TASKS[@]} --round_timeout_s=0 \
  2>"$OUT/logs/coldfused.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$OUT/port" ] && break; sleep 0.1; done
[ -s "$OUT/port" ] || { echo "coldfused did not start:"; cat "$OUT/logs/coldfused.log"; exit 1; }
ADDR=127.0.0.1:$(cat "$OUT/port")
ctl() { "$CTL_BIN" --server="$ADDR" "$@"; }
ctl init --from="$MODEL" --shared_prefix=embeddings.,encoder.

COMMON=(--model="$MODEL" --max_seq_length=64 --batch_size=16 --lr=5e-5 --warmup_ratio=0.1)
probe() {  # few-shot score of base v$1 on the unseen task: fresh head, SHOTS examples
  "$CLIENT_BIN" --probe --server="$ADDR" --base_version="$1" "${COMMON[@]}" \
    --probe_examples="$SHOTS" --epochs=5 --threads=2 \
    --train="models/data/$UNSEEN/train.csv" --test="models/data/$UNSEEN/test.csv" \
    2>>"$OUT/logs/probe.log"
}
echo "== $UNSEEN, $SHOTS-shot, from base v0:"
probe 0 | tee "$OUT/probe-v0.json"

echo "== ${#TASKS[@]} contributors, $STEPS steps each (logs in $OUT/logs/)"
if [ "${PYTHON:-0}" = 1 ]; then
  # The Python client, installed as a user would (pip install ./python), and the example.
  PY=.venv/bin/python
  "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
    --target "$BUILD/python-site" ./python >"$OUT/logs/pip.log" 2>&1
  t=${TASKS[-1]}
  unset 'TASKS[-1]'
  echo "   $t: a Python contributor (transformers.Trainer + coldfuse.hf callback)"
  PYTHONPATH="$BUILD/python-site" "$PY" python/examples/finetune_minilm.py \
    --server="$ADDR" --insecure --name="$t" --task="$t" --model="$MODEL" \
    --max_seq_length=64 --batch_size=16 --lr=5e-5 --warmup_ratio=0.1 --steps="$STEPS" \
    --threads=1 --output_dir="$OUT/hf-$t" --train="models/data/$t/train.csv" \
    --dev="models/data/$t/dev.csv" --test="models/data/$t/test.csv" \
    >"$OUT/logs/client-$t.log" 2>&1 &
  pids+=($!)
fi
for t in "${TASKS[@]}"; do
  "$CLIENT_BIN" --server="$ADDR" --name="$t" --task="$t" --state_dir="$OUT/clients/$t" \
    "${COMMON[@]}" --steps="$STEPS" --threads=1 --max_rounds=1 --poll_s=0.2 \
    --train="models/data/$t/train.csv" --dev="models/data/$t/dev.csv" \
    --test="models/data/$t/test.csv" 2>"$OUT/logs/client-$t.log" &
  pids+=($!)
done
ctl wait --base=1 --timeout_s=3600 >/dev/null
echo
ctl round 1
echo
echo "== $UNSEEN, $SHOTS-shot, from the fused base v1:"
probe 1 | tee "$OUT/probe-v1.json"
ctl status --json >"$OUT/status.json"
