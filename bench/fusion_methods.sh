#!/usr/bin/env bash
# Fusion time and the server's peak memory (VmHWM) for one round of 4 full contributions
# to the benchmark model, per fusion method and outer optimizer (docs/benchmarks.md).
# Usage: bench/fusion_methods.sh BUILD MODELS_DIR
set -euo pipefail
B=${1:-build}
M=${2:?usage: bench/fusion_methods.sh BUILD MODELS_DIR (bench/make_models.py output: model.safetensors, contrib-1..4.safetensors)}
for cfg in "plain:" "nesterov:--outer_optimizer=nesterov" "ties:--fusion=ties" "median-nesterov:--fusion=median --outer_optimizer=nesterov"; do
  name=${cfg%%:*}; flags=${cfg#*:}
  d=$(mktemp -d)
  $B/server/coldfused --data_dir=$d/db --listen=127.0.0.1:0 --port_file=$d/port --insecure --min_contributions=4 --round_timeout_s=0 2>$d/log &
  pid=$!
  for _ in $(seq 100); do [ -s $d/port ] && break; sleep 0.1; done
  ctl() { $B/ctl/coldfusectl --server=127.0.0.1:$(cat $d/port) "$@"; }
  ctl init --from=$M/model.safetensors $flags >/dev/null
  for k in 1 2 3 4; do ctl push --checkpoint=$M/contrib-$k.safetensors --name=c$k --num_examples=1 >/dev/null; done
  ctl wait --base=1 --timeout_s=1200 >/dev/null
  ms=$(ctl round 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("fusion_duration_ms"))')
  hwm=$(grep VmHWM /proc/$pid/status | awk '{print $2/1024 " MiB"}')
  echo "$name: fusion ${ms} ms; server VmHWM $hwm"
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf $d
done
