#!/usr/bin/env bash
# How much of a slow contributor's work is fused: two contributors train S steps a
# round, a third 3*S, against a real coldfused (--min_contributions=2), once with
# synchronous rounds (--max_staleness=0, what coldfuse did before asynchronous
# contributions) and once with the default bound. Prints, for each, the slow
# contributor's trainings, how many were fused, and their staleness.
#
#   bash bench/async_fraction.sh [BUILD_DIR] [FAST_ROUNDS] [STEPS]
set -euo pipefail
BUILD=${1:-build}
ROUNDS=${2:-12}
STEPS=${3:-400}
BIN=$(cd "$BUILD" && pwd)
WORK=$(mktemp -d /tmp/coldfuse-async-XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 - "$WORK" <<'EOF'
import random, sys
for name, seed in (("alice", 1), ("bob", 2), ("carol", 3)):
    rng = random.Random(seed)
    with open(f"{sys.argv[1]}/{name}.csv", "w") as f:
        f.write(",".join(["label"] + [f"f{i}" for i in range(8)]) + "\n")
        for r in range(300):
            c = r % 3
            f.write(",".join([str(c)] + [f"{rng.gauss(c, 1):.4f}" for _ in range(8)]) + "\n")
EOF

run() {  # $1: label, $2: --max_staleness value
  local dir="$WORK/$1"
  mkdir -p "$dir"
  "$BIN/server/coldfused" --data_dir="$dir/db" --insecure --listen=127.0.0.1:0 \
    --port_file="$dir/port" --min_contributions=2 --round_timeout_s=0 \
    --max_staleness="$2" >"$dir/server.log" 2>&1 &
  local server=$!
  for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
  local addr="127.0.0.1:$(cat "$dir/port")"
  "$BIN/ctl/coldfusectl" --server="$addr" init --spec=mlp:8,64,8 --seed=3 >/dev/null
  local pids=()
  for who in alice bob carol; do
    local steps=$STEPS rounds=$ROUNDS
    if [ "$who" = carol ]; then steps=$((3 * STEPS)); rounds=0; fi
    "$BIN/client/daemon/coldfuse-client" --server="$addr" --name="$who" --task="$who" \
      --state_dir="$dir/state-$who" --train="$WORK/$who.csv" --test="$WORK/$who.csv" \
      --steps="$steps" --threads=1 --poll_s=0.05 --max_rounds="$rounds" \
      >"$dir/$who.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[0]}" "${pids[1]}"        # the fast ones finish their rounds
  kill -TERM "${pids[2]}"; wait "${pids[2]}" || true
  local trained fused stale
  # Trainings that finished (the one cut short by the stop at the end does not count).
  trained=$(grep -cE ": [0-9]+ steps, loss " "$dir/carol.log" || true)
  local accepted
  read -r accepted fused stale < <("$BIN/ctl/coldfusectl" --server="$addr" rounds --json | python3 -c '
import json, sys
rounds = json.load(sys.stdin).get("rounds", [])
mine = [(r.get("state"), c.get("staleness", 0)) for r in rounds
        for c in r.get("contributions", []) if c["contributor"] == "carol"]
s = [st for state, st in mine if state == "CLOSED"]
print(len(mine), len(s), ",".join(map(str, s)) or "-")')
  local closed
  closed=$("$BIN/ctl/coldfusectl" --server="$addr" status --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["base_version"])')
  printf '%-34s rounds fused %3d | slow contributor: %2d trainings done, %2d accepted, %2d fused (%3.0f%%), staleness %s\n' \
    "$1 (--max_staleness=$2)" "$closed" "$trained" "$accepted" "$fused" \
    "$(python3 -c "print(100 * $fused / max(1, $trained))")" "$stale"
  kill -TERM "$server"; wait "$server" || true
}

run synchronous 0
run asynchronous 4
