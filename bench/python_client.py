#!/usr/bin/env python3
"""The Python client's upload and download throughput next to the C++ client's, for the
benchmark's 1 GiB model (bench/make_models.py, as bench/bench.py uses it).

One coldfused (--insecure, a fresh data folder, loopback) holds base v0 from
model.safetensors (shared prefix "model."). Then RUNS rounds of, alternating which goes
first:
  upload:   `coldfusectl push --checkpoint=contrib-i.safetensors` and
            `Client.push("contrib-j.safetensors")`, each a full contribution (another
            file each time: the server refuses the same bytes twice);
  download: `coldfusectl export --version=0 --out=DIR` and `Client.pull(FILE, 0)`, both
            writing a safetensors file, deleted after each run.
Prints MB/s per run and the medians, and writes them as JSON.

  .venv/bin/python bench/python_client.py --models_dir=/work/bench-models [--runs=3]
      [--build=build] [--out=bench/results/python-client.json]
Needs the Python client importable (python/run_tests.sh installs it into
BUILD/python-site; this script adds that folder to sys.path).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models_dir", required=True)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work_dir", default="/tmp/coldfuse-bench-python")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "python-client.json"))
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    site = os.path.join(build, "python-site")
    if not os.path.isdir(site):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                        "--no-deps", "--target", site, os.path.join(ROOT, "python")],
                       check=True)
    sys.path.insert(0, site)
    from coldfuse import Client

    shutil.rmtree(a.work_dir, ignore_errors=True)
    os.makedirs(a.work_dir)
    port = free_port()
    addr = f"127.0.0.1:{port}"
    log = open(os.path.join(a.work_dir, "coldfused.log"), "w")
    server = subprocess.Popen([os.path.join(build, "server", "coldfused"),
                               f"--data_dir={a.work_dir}/db", f"--listen={addr}", "--insecure",
                               "--min_contributions=1000", "--round_timeout_s=0"],
                              stdout=log, stderr=subprocess.STDOUT)
    ctl_bin = os.path.join(build, "ctl", "coldfusectl")

    def ctl(*args):
        t = time.monotonic()
        r = subprocess.run([ctl_bin, f"--server={addr}", "--timeout_s=600", *args],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"coldfusectl {' '.join(args)}: {r.stderr[-2000:]}")
        return time.monotonic() - t

    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        ctl("init", f"--from={a.models_dir}/model.safetensors", "--shared_prefix=model.")
        client = Client(addr, insecure=True, timeout=600)
        total = sum(_bytes(t) for t in client.open_round().manifest.tensors)
        rows = {"cpp_push": [], "py_push": [], "cpp_pull": [], "py_pull": []}
        contrib = iter(range(1, 17))
        for run in range(a.runs):
            order = ("cpp", "py") if run % 2 == 0 else ("py", "cpp")
            for who in order:
                path = f"{a.models_dir}/contrib-{next(contrib)}.safetensors"
                if who == "cpp":
                    s = ctl("push", f"--checkpoint={path}", "--num_examples=1000",
                            f"--name=cpp-{run}")
                else:
                    t = time.monotonic()
                    client.push(path, num_examples=1000, name=f"py-{run}")
                    s = time.monotonic() - t
                rows[f"{who}_push"].append(total / s / 1e6)
                print(f"run {run + 1} {who:3} push {total / s / 1e6:7.1f} MB/s", flush=True)
            for who in order:
                out = os.path.join(a.work_dir, f"pull-{who}")
                if who == "cpp":
                    s = ctl("export", "--version=0", f"--out={out}")
                else:
                    os.makedirs(out, exist_ok=True)
                    t = time.monotonic()
                    client.pull(os.path.join(out, "model.safetensors"), 0)
                    s = time.monotonic() - t
                shutil.rmtree(out)
                rows[f"{who}_pull"].append(total / s / 1e6)
                print(f"run {run + 1} {who:3} pull {total / s / 1e6:7.1f} MB/s", flush=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        result = {"bytes": total, "runs": a.runs, "mb_per_s": rows, "median": med,
                  "python_vs_cpp": {"push": med["py_push"] / med["cpp_push"],
                                    "pull": med["py_pull"] / med["cpp_pull"]}}
        print(json.dumps(result["median"], indent=1))
        print(f"python / C++: push {result['python_vs_cpp']['push']:.2f}x, "
              f"pull {result['python_vs_cpp']['pull']:.2f}x")
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(a.work_dir, ignore_errors=True)


def _bytes(spec):
    from coldfuse import _codec
    return _codec.byte_length(spec)


if __name__ == "__main__":
    main()
