#!/usr/bin/env bash
# Fusion time and the server's peak memory (VmHWM) for one round of 4 contributions to
# the benchmark model, per fusion method, outer optimizer and contribution encoding
# (docs/benchmarks.md).
# Usage: bench/fusion_methods.sh BUILD MODELS_DIR [CONFIG ...]
# CONFIG is one of the names below (default: all of them), each run once, in order.
set -euo pipefail
B=${1:-build}
M=${2:?usage: bench/fusion_methods.sh BUILD MODELS_DIR [CONFIG ...] (MODELS_DIR: bench/make_models.py output: model.safetensors, contrib-1..4.safetensors)}
shift 2 || true
# name:init flags:push flags
ALL=("plain::" "nesterov:--outer_optimizer=nesterov:" "ties:--fusion=ties:"
     "median-nesterov:--fusion=median --outer_optimizer=nesterov:"
     "plain-int8::--encoding=delta_int8" "nesterov-int8:--outer_optimizer=nesterov:--encoding=delta_int8")
want=("$@")
for cfg in "${ALL[@]}"; do
  name=${cfg%%:*}; rest=${cfg#*:}; flags=${rest%%:*}; push_flags=${rest#*:}
  if [ ${#want[@]} -gt 0 ] && ! printf '%s\n' "${want[@]}" | grep -qx "$name"; then continue; fi
  d=$(mktemp -d)
  $B/server/coldfused --data_dir=$d/db --listen=127.0.0.1:0 --port_file=$d/port --insecure --min_contributions=4 --round_timeout_s=0 2>$d/log &
  pid=$!
  for _ in $(seq 100); do [ -s $d/port ] && break; sleep 0.1; done
  ctl() { $B/ctl/coldfusectl --server=127.0.0.1:$(cat $d/port) "$@"; }
  ctl init --from=$M/model.safetensors $flags >/dev/null
  for k in 1 2 3 4; do ctl push --checkpoint=$M/contrib-$k.safetensors --name=c$k --num_examples=1 $push_flags >/dev/null; done
  ctl wait --base=1 --timeout_s=1200 >/dev/null
  ms=$(ctl round 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("fusion_duration_ms"))')
  hwm=$(grep VmHWM /proc/$pid/status | awk '{print $2/1024 " MiB"}')
  echo "$name: fusion ${ms} ms; server VmHWM $hwm"
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf $d
done
