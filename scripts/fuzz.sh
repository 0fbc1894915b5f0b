#!/usr/bin/env bash
# Runs the libFuzzer binaries of a COLDFUSE_FUZZ build (`make fuzz`; docs/development.md,
# "Fuzzing"), one after the other, each for SECONDS:
#   scripts/fuzz.sh BUILD_DIR SECONDS [TARGET...]     (default: every target in fuzz/corpus/)
# Each target reads its seeds from fuzz/corpus/<target>/ and keeps what it finds in the
# git-ignored BUILD_DIR/corpus/<target>/, so later runs start where this one stopped.
# Crashes, leaks, timeouts and out-of-memory inputs land in BUILD_DIR/crashes/<target>/;
# libFuzzer's output in BUILD_DIR/fuzz-logs/. Each run appends a line to
# BUILD_DIR/fuzz-hours.tsv (date, target, wall seconds, execs, ..., CPU seconds), so the
# CPU time spent per target can be summed across runs, also when the fuzzers shared the
# machine (rows written before the cpu_s column count wall seconds):
#   awk -F'\t' 'NR>1{s[$2]+=(NF>=12?$12:$3)} END{for(t in s) print t, s[t]}' BUILD_DIR/fuzz-hours.tsv
# Exits 1 if any target crashed.
set -euo pipefail

build=${1:?usage: fuzz.sh BUILD_DIR SECONDS [TARGET...]}
seconds=${2:?usage: fuzz.sh BUILD_DIR SECONDS [TARGET...]}
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for d in "$root"/fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi

log="$build/fuzz-hours.tsv"
if [ ! -s "$log" ]; then
  printf 'date\ttarget\tseconds\texecs\texecs_per_s\tnew_units\tcov\tft\tcorpus\tcrashes\texit\tcpu_s\n' \
    >"$log"
fi
mkdir -p "$build/fuzz-logs"

symbolizer=""
for s in "$(dirname "$(readlink -f "$(command -v clang++-14 || echo /usr/bin/clang++-14)")")/llvm-symbolizer" \
         /usr/lib/llvm-14/bin/llvm-symbolizer; do
  if [ -x "$s" ]; then symbolizer=":external_symbolizer_path=$s"; break; fi
done
export ASAN_OPTIONS="detect_stack_use_after_return=1:check_initialization_order=1$symbolizer"
export LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1$symbolizer"

failed=()
for t in "${targets[@]}"; do
  bin="$build/fuzz/${t}_fuzz"
  if [ ! -x "$bin" ]; then
    echo "fuzz.sh: no $bin; build it with: cmake --build $build --target ${t}_fuzz" >&2
    exit 2
  fi
  work="$build/corpus/$t"
  crashes="$build/crashes/$t"
  mkdir -p "$work" "$crashes"
  out="$build/fuzz-logs/$t.$(date +%Y%m%dT%H%M%S).log"
  count_crashes() {
    find "$crashes" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
      -o -name 'oom-*' \) | wc -l
  }
  before=$(count_crashes)
  echo "=== fuzz $t for ${seconds} s (log: $out)"
  start=$SECONDS
  set +e
  # -timeout is wall-clock: 60 s catches a hang without flagging a slow input (tokenizer_load
  # takes ~0.5 s CPU on its largest) starved by other work on a shared machine.
  /usr/bin/time -f '%U %S' -o "$out.time" \
    "$bin" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=60 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$work" "$root/fuzz/corpus/$t" \
    >"$out" 2>&1
  rc=$?
  set -e
  elapsed=$((SECONDS - start))
  final_stat() { grep -o "stat::$1: *[0-9]*" "$out" | tail -1 | grep -o '[0-9]*$' || echo 0; }
  execs=$(final_stat number_of_executed_units)
  eps=$(final_stat average_exec_per_sec)
  new=$(final_stat new_units_added)
  last=$(grep -E '^#[0-9]+' "$out" | tail -1 || true)
  field() { echo "$last" | grep -o "$1: *[0-9]*" | grep -o '[0-9]*$' || echo 0; }
  cov=$(field cov)
  ft=$(field ft)
  corp=$(echo "$last" | grep -o 'corp: *[0-9]*' | grep -o '[0-9]*$' || echo 0)
  found=$(($(count_crashes) - before))
  cpu=$(awk '/^[0-9.]+ [0-9.]+$/{printf "%d", $1 + $2}' "$out.time" 2>/dev/null || echo 0)
  rm -f "$out.time"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -Iseconds)" "$t" \
    "$elapsed" "$execs" "$eps" "$new" "$cov" "$ft" "$corp" "$found" "$rc" "${cpu:-0}" >>"$log"
  echo "    ${cpu:-0} CPU s, $execs execs ($eps/s), $new new units, cov $cov ft $ft, corpus $corp, exit $rc"
  if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ]; then
    failed+=("$t")
    echo "    FAILED: see $out and $crashes/; reproduce with: $bin <file>"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*fuzz invariant failed)' "$out" | head -5 | sed 's/^/    /'
  fi
done

echo "fuzz.sh: totals per target in $log"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
