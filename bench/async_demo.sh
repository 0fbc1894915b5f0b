#!/usr/bin/env bash
# `make demo` with one contributor 3x slower than the others (SLOW=3: mod3 trains 15
# epochs a round instead of 5, rounds close at 3 of 4), run N times alternating
# synchronous rounds (MAX_STALENESS=0) and asynchronous ones (the default bound, 4).
# Prints one line per run and the medians: the unseen task's 100-shot accuracy at base v6,
# how many of the slow contributor's trainings were fused in rounds 1-6, and the
# accuracy of the base it last started from on its own task (what the fused base knows
# about the slow contributor's data).
#
#   bash bench/async_demo.sh [BUILD_DIR] [RUNS_PER_MODE]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
RUNS=${2:-5}
OUT=$(mktemp /tmp/coldfuse-async-demo-XXXXXX.tsv)
printf 'mode\tunseen_v6\ttrained\tfused\tslow_task_before\n' >"$OUT"
for i in $(seq "$RUNS"); do
  for ms in 0 4; do
    mode=$([ "$ms" = 0 ] && echo sync || echo async)
    log=$(SLOW=3 MAX_STALENESS=$ms bash scripts/demo.sh "$BUILD" 2>&1)
    unseen=$(echo "$log" | sed -nE 's/^unseen-task score: .* -> base v6 ([0-9.]+)$/\1/p')
    read -r trained fused < <(echo "$log" |
      sed -nE 's/^mod3 .*: ([0-9]+) trainings finished, ([0-9]+) fused.*/\1 \2/p')
    before=$(grep -oE "test accuracy [0-9.]+ -> " demo-run/logs/client-mod3.log | tail -1 |
      awk '{print $3}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$unseen" "$trained" "$fused" "$before" | tee -a "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for mode in ("sync", "async"):
    r = [x for x in rows if x["mode"] == mode]
    med = lambda k: statistics.median(float(x[k]) for x in r)
    frac = sum(int(x["fused"]) for x in r) / max(1, sum(int(x["trained"]) for x in r))
    print(f"{mode:5}  runs {len(r)}  unseen@v6 median {med('unseen_v6'):.4f} "
          f"(min {min(float(x['unseen_v6']) for x in r):.4f}, max {max(float(x['unseen_v6']) for x in r):.4f})"
          f"  slow trainings fused {frac:.0%}  slow task, base's score before its last training: median {med('slow_task_before'):.4f}")
PY
echo "(every run: $OUT)"
