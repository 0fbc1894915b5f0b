#!/usr/bin/env bash
# The main job on the embedded default: a coldfused with its RocksDB in demo-run/, four
# coldfuse-client daemons fine-tuning on different groupings of the UCI digits, several
# rounds, and a per-round table. Usage: scripts/demo.sh [BUILD_DIR]  (ROUNDS=6 by default)
# SLOW=3: the last contributor trains 3x as long as the others and rounds close at the
# other three (asynchronous contributions: its work arrives late and is fused, down-
# weighted, as a stale contribution); with MAX_STALENESS=0 as well, rounds are
# synchronous and late work is thrown away.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
ROUNDS=${ROUNDS:-6}
SLOW=${SLOW:-1}
MAX_STALENESS=${MAX_STALENESS:-4}
OUT=demo-run
TASKS=(low-digits high-digits parity mod3)
UNSEEN=unseen-digits10
SERVER_BIN=$BUILD/server/coldfused
CLIENT_BIN=$BUILD/client/daemon/coldfuse-client
CTL_BIN=$BUILD/ctl/coldfusectl

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$OUT"
mkdir -p "$OUT/logs" "$OUT/tokens"
echo "== preparing data (UCI optical digits from Debian's python3-sklearn; see docs/data.md)"
python3 scripts/prepare_digits.py "$OUT/data"

echo "== making a CA and a server certificate for TLS (deploy/make-certs.sh)"
bash deploy/make-certs.sh "$OUT/certs" >"$OUT/logs/certs.log"

QUORUM=${#TASKS[@]}
SLOW_TASK=
if [ "$SLOW" != 1 ]; then
  QUORUM=$((${#TASKS[@]} - 1))
  SLOW_TASK=${TASKS[-1]}
fi
echo "== starting coldfused with TLS and tokens (data folder $OUT/server-data)"
"$SERVER_BIN" --data_dir="$OUT/server-data" --listen=127.0.0.1:0 --port_file="$OUT/port" \
  --tls_cert="$OUT/certs/server.crt" --tls_key="$OUT/certs/server.key" \
  --bootstrap_token_file="$OUT/tokens/operator.token" \
  --http_listen=127.0.0.1:0 --http_port_file="$OUT/http-port" \
  --min_contributions=$QUORUM --max_staleness="$MAX_STALENESS" \
  --round_timeout_s=300 2>"$OUT/logs/coldfused.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$OUT/port" ] && break; sleep 0.1; done
[ -s "$OUT/port" ] || { echo "coldfused did not start:"; cat "$OUT/logs/coldfused.log"; exit 1; }
ADDR=127.0.0.1:$(cat "$OUT/port")
TLS=(--tls_ca="$OUT/certs/ca.crt")
ctl() { "$CTL_BIN" --server="$ADDR" "${TLS[@]}" --token_file="$OUT/tokens/operator.token" "$@"; }

ctl init --spec=mlp:64,128,64 --seed=1 --fusion=mean
# One contributor token per contributor (its name is its identity), an evaluator token for
# the probe (it may pull bases and record scores, not contribute), a viewer token for the
# dashboard.
for t in "${TASKS[@]}"; do
  ctl token create --name="$t" --role=contributor --out="$OUT/tokens/$t.token" 2>/dev/null
done
ctl token create --name=prober --role=evaluator --out="$OUT/tokens/prober.token" 2>/dev/null
ctl token create --name=dashboard --role=viewer --out="$OUT/tokens/viewer.token" 2>/dev/null
echo "   while the demo runs: dashboard at https://127.0.0.1:$(cat "$OUT/http-port")/ (viewer token"
echo "   in $OUT/tokens/viewer.token; the browser will not know the demo's CA, $OUT/certs/ca.crt)"

# The unseen-task score of base v$1 (fresh head + body fine-tuned on 100 examples),
# recorded on the server as an evaluation of task $UNSEEN.
probe() {
  "$CLIENT_BIN" --probe --server="$ADDR" "${TLS[@]}" --token_file="$OUT/tokens/prober.token" \
    --base_version="$1" --probe_examples=100 --task="$UNSEEN" \
    --train="$OUT/data/$UNSEEN/train.csv" --test="$OUT/data/$UNSEEN/test.csv" \
    --threads=1 >>"$OUT/logs/probe.log" 2>&1
}
probe 0

echo "== starting ${#TASKS[@]} contributors for $ROUNDS rounds (logs in $OUT/logs/)"
[ -z "$SLOW_TASK" ] || echo "   $SLOW_TASK trains ${SLOW}x as long; rounds close at $QUORUM" \
  "contributions (--max_staleness=$MAX_STALENESS)"
for t in "${TASKS[@]}"; do
  epochs=5
  [ "$t" != "$SLOW_TASK" ] || epochs=$((5 * SLOW))
  "$CLIENT_BIN" --server="$ADDR" "${TLS[@]}" --token_file="$OUT/tokens/$t.token" \
    --name="$t" --task="$t" --state_dir="$OUT/clients/$t" \
    --train="$OUT/data/$t/train.csv" --test="$OUT/data/$t/test.csv" --epochs="$epochs" \
    --max_rounds="$ROUNDS" --threads=1 --poll_s=0.2 2>"$OUT/logs/client-$t.log" &
  pids+=($!)
done
for r in $(seq 1 "$ROUNDS"); do
  ctl wait --base="$r" --timeout_s=600 >/dev/null
  probe "$r"
  echo "   round $r fused into base v$r"
done

# The unseen-task column comes from the server's stored evaluations.
declare -A unseen
while IFS=$'\t' read -r base value; do unseen[$base]=$(printf '%.4f' "$value"); done < <(
  ctl evals --task="$UNSEEN" --format=tsv | awk -F'\t' '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $(col["metric"]) == "accuracy" { print $(col["base"]) "\t" $(col["value"]) }')

echo
echo "== per round: each contributor's held-out accuracy before -> after its fine-tuning,"
echo "   and the unseen task's accuracy after fine-tuning that base on 100 examples"
printf '%-6s %-8s %-6s' round base n
for t in "${TASKS[@]}"; do printf ' %-13s' "$t"; done
printf ' %s\n' "$UNSEEN(100-shot)"
printf '%-6s %-8s %-6s' - v0 -
for t in "${TASKS[@]}"; do printf ' %-13s' -; done
printf ' %s\n' "${unseen[0]}"
for r in $(seq 1 "$ROUNDS"); do
  tsv=$(ctl round "$r" --format=tsv)
  n=$(($(echo "$tsv" | wc -l) - 1))
  printf '%-6s %-8s %-6s' "$r" "v$((r - 1))->v$r" "$n"
  for t in "${TASKS[@]}"; do
    cell=$(echo "$tsv" | awk -F'\t' -v who="$t" '
      NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
      $2 == who { printf "%.2f->%.2f", $(col["accuracy_before"]), $(col["accuracy_after"]) }')
    printf ' %-13s' "${cell:--}"
  done
  printf ' %s\n' "${unseen[$r]}"
done
echo
echo "unseen-task score: base v0 ${unseen[0]} -> base v$ROUNDS ${unseen[$ROUNDS]}"
if [ -n "$SLOW_TASK" ]; then
  trained=$(grep -cE ": [0-9]+ steps, loss " "$OUT/logs/client-$SLOW_TASK.log" || true)
  fused=$(for r in $(seq 1 "$ROUNDS"); do ctl round "$r" --format=tsv; done |
    awk -F'\t' -v who="$SLOW_TASK" '$2 == who' | wc -l)
  echo "$SLOW_TASK (${SLOW}x slower): $trained trainings finished, $fused fused in rounds 1-$ROUNDS"
fi
echo
ctl status
ctl status --json >"$OUT/status.json"
echo
echo "coldfusectl status --json (saved in $OUT/status.json) says the same:"
# The first base_version is the server's; "number" is the open round's.
for key in base_version number change_seq; do
  grep -m1 "\"$key\"" "$OUT/status.json" | sed 's/^ */   /'
done
echo "(dashboards: $CTL_BIN --server=$ADDR --tls_ca=$OUT/certs/ca.crt --token_file=TOKEN"
echo "   status --json | rounds --json | round N --json | evals --json; operators: audit,"
echo "   token list; the unseen-task scores: $CTL_BIN ... evals)"
