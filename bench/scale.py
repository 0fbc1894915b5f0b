#!/usr/bin/python3
"""coldfuse with many contributors: K small contributions per round (issue 14, item 7).

    /usr/bin/python3 bench/scale.py [--k 100,1000] [--model_mb 10] [--parallel 8]
                                    [--methods mean,median,trimmed] [--work_dir DIR]

Per fusion method and K: a fresh `coldfused --insecure --min_contributions=K` and data
folder, `coldfusectl init --from` a BF16 base of --model_mb, then K `coldfusectl push`es
(contributors contrib-1..K, --parallel at a time) of contributions drawn from a pool of
16 distinct files (bench/make_models.py), so disk use does not grow with K. The K-th
commit reaches the quorum and the server closes and fuses the round on its own.

Measured, per run: accepted uploads per second and MB/s over the upload phase (first push
started to last push returned, K uploads), the close (last push returned to base v1
served, i.e. screening + fusion + the synced commit), the server's peak RSS (VmHWM) and
its RSS after the close, and the store's size. Results go to bench/results/scale-latest.json
and a table on stdout. See docs/scaling.md for what the numbers mean.
"""
import argparse
import atexit
import concurrent.futures
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench  # noqa: E402  (Server, run, vm_status, dir_bytes, settle, machine_info)

MB = 1e6
POOL = 16  # distinct contribution files


def one_run(build, work, info, k, method, parallel):
    ctl = os.path.join(build, "ctl", "coldfusectl")
    tag = f"{method} K={k}"
    run_dir = os.path.join(work, f"run-{method}-k{k}")
    res = {"method": method, "k": k, "parallel": parallel,
           "contribution_bytes": info["shared_bytes"]}
    res["sync_before_s"] = bench.settle()
    server = bench.Server(build, run_dir, k, tls=False)
    try:
        server.ctl(ctl, "init", f"--from={info['base']}",
                   f"--shared_prefix={bench.SHARED_PREFIX}", f"--fusion={method}")
        hwm0, rss0 = bench.vm_status(server.proc.pid)
        res["server_rss_after_init_bytes"] = rss0

        def push(j):
            path = info["contributions"][(j - 1) % len(info["contributions"])]
            _, dt = server.ctl(ctl, "push", f"--checkpoint={path}", f"--name=contrib-{j}",
                               f"--num_examples={bench.NUM_EXAMPLES}")
            return dt

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            per_push = list(pool.map(push, range(1, k + 1)))
        upload_s = time.perf_counter() - t0
        hwm_up, rss_up = bench.vm_status(server.proc.pid)
        server.ctl(ctl, "wait", "--base=1", "--timeout_s=3600")
        close_s = time.perf_counter() - t0 - upload_s
        hwm, rss = bench.vm_status(server.proc.pid)
        per_push.sort()
        res.update(
            upload_s=upload_s, uploads_per_s=k / upload_s,
            upload_mbps=k * info["shared_bytes"] / upload_s / MB,
            push_s_median=per_push[len(per_push) // 2], push_s_max=per_push[-1],
            close_s=close_s, close_input_mbps=k * info["shared_bytes"] / close_s / MB,
            server_vmhwm_uploads_bytes=hwm_up, server_vmhwm_bytes=hwm,
            server_vmrss_after_close_bytes=rss,
            store=bench.dir_bytes(server.data))
        bench.log(f"{tag}: {k} uploads in {upload_s:.1f} s ({k / upload_s:.1f}/s, "
                  f"{res['upload_mbps']:.0f} MB/s), close {close_s:.2f} s, server VmHWM "
                  f"{hwm / MB:.0f} MB (uploads only {hwm_up / MB:.0f} MB)")
    finally:
        res["server_exit"] = server.stop()
        if not bench.KEEP:
            shutil.rmtree(run_dir, ignore_errors=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", default="100,1000", help="contributions per round, comma-separated")
    p.add_argument("--model_mb", type=float, default=10, help="size of each contribution")
    p.add_argument("--parallel", type=int, default=8, help="pushes in flight at a time")
    p.add_argument("--methods", default="mean,median,trimmed",
                   help="fusion methods (coldfusectl init --fusion)")
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--work_dir", default=tempfile.gettempdir())
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "scale-latest.json"))
    a = p.parse_args(argv)
    try:
        ks = [int(x) for x in a.k.split(",") if x]
        methods = [m for m in a.methods.split(",") if m]
    except ValueError:
        p.error("--k takes comma-separated integers")
    if not ks or min(ks) < 1 or a.parallel < 1 or a.model_mb <= 0:
        p.error("--k, --parallel and --model_mb must be positive")

    atexit.register(bench._cleanup)  # servers are killed on any exit
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, bench._on_signal)
    work = tempfile.mkdtemp(prefix="coldfuse-scale-", dir=a.work_dir)
    results = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
               "machine": bench.machine_info(work), "args": vars(a), "runs": []}
    try:
        models = argparse.Namespace(models_dir=None, model_mb=a.model_mb, seed=a.seed)
        info = bench.prepare_models(work, models, POOL)
        for method in methods:
            for k in ks:
                results["runs"].append(one_run(a.build, work, info, k, method, a.parallel))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\n{'method':8} {'K':>5} {'uploads/s':>9} {'MB/s':>6} {'push s (med/max)':>17} "
          f"{'close s':>8} {'VmHWM MB':>9} {'store MB':>9}")
    for r in results["runs"]:
        print(f"{r['method']:8} {r['k']:5d} {r['uploads_per_s']:9.1f} {r['upload_mbps']:6.0f} "
              f"{r['push_s_median']:8.2f}/{r['push_s_max']:<8.2f} {r['close_s']:8.2f} "
              f"{r['server_vmhwm_bytes'] / MB:9.0f} {r['store']['total'] / MB:9.0f}")
    print(f"\nraw numbers: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
