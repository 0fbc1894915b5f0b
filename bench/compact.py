#!/usr/bin/env python3
"""What compact contributions save and cost: the same round fused from F32 uploads, BF16
uploads, 16-bit deltas and 8-bit deltas, against the exact (float64) mean.

Usage: .venv/bin/python bench/compact.py [--mb 64] [--k 4] [--build build]
Prints bytes sent per contribution and the fused-weight error (max and RMS absolute, and
RMS relative to the size of the average update), as a table and JSON.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64, help="model size in MiB (F32)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--delta_scale", type=float, default=1e-3,
                    help="std of each contribution's update relative to weights of std 1")
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    n = int(a.mb * 2**20 / 4 / 1024)
    work = tempfile.mkdtemp(prefix="coldfuse-compact-")
    try:
        base = {"model.w": rng.standard_normal((n, 1024), dtype=np.float32)}
        save_file(base, f"{work}/base.safetensors")
        contribs = []
        for k in range(a.k):
            c = {"model.w": base["model.w"] + (a.delta_scale * rng.standard_normal(
                (n, 1024))).astype(np.float32)}
            save_file(c, f"{work}/c{k}.safetensors")
            contribs.append(c)
        exact = sum(c["model.w"].astype(np.float64) for c in contribs) / a.k
        update = exact - base["model.w"].astype(np.float64)
        rows = []
        for name, extra in [("F32 full", []), ("BF16 full", ["--send_dtype=bf16"]),
                            ("BF16 delta", ["--encoding=delta", "--send_dtype=bf16"]),
                            ("F16 delta", ["--encoding=delta", "--send_dtype=f16"]),
                            ("INT8 delta, B=32", ["--encoding=delta_int8", "--int8_block_size=32"]),
                            ("INT8 delta, B=64", ["--encoding=delta_int8", "--int8_block_size=64"]),
                            ("INT8 delta, B=128",
                             ["--encoding=delta_int8", "--int8_block_size=128"])]:
            d = f"{work}/{name.replace(' ', '_').replace(',', '').replace('=', '')}"
            os.makedirs(d)
            port_file = f"{d}/port"
            srv = subprocess.Popen([f"{a.build}/server/coldfused", f"--data_dir={d}/db",
                                    "--listen=127.0.0.1:0", f"--port_file={port_file}",
                                    "--insecure", f"--min_contributions={a.k}"],
                                   stderr=subprocess.DEVNULL)
            try:
                for _ in range(300):
                    if os.path.exists(port_file) and open(port_file).read().strip():
                        break
                    time.sleep(0.1)
                ctl = [f"{a.build}/ctl/coldfusectl",
                       f"--server=127.0.0.1:{open(port_file).read().strip()}"]
                run(ctl + ["init", f"--from={work}/base.safetensors"])
                for k in range(a.k):
                    run(ctl + ["push", f"--checkpoint={work}/c{k}.safetensors",
                               f"--name=c{k}", "--num_examples=1"] + extra)
                run(ctl + ["wait", "--base=1", "--timeout_s=600"])
                rounds = json.loads(run(ctl + ["round", "1", "--json"]))
                sent = int(rounds["contributions"][0]["bytes"])
                run(ctl + ["export", "--version=1", f"--out={d}/out"])
                fused = load_file(f"{d}/out/model.safetensors")["model.w"].astype(np.float64)
            finally:
                srv.terminate()
                srv.wait()
            err = fused - exact
            rows.append({
                "encoding": name, "bytes_per_contribution": sent,
                "bytes_vs_f32": sent / (n * 1024 * 4),
                "max_abs_error": float(np.abs(err).max()),
                "rms_abs_error": float(np.sqrt((err ** 2).mean())),
                "rms_error_vs_rms_update": float(np.sqrt((err ** 2).mean() /
                                                         (update ** 2).mean())),
            })
        print(f"model: {n * 1024 / 1e6:.1f} M params F32, K={a.k}, update std "
              f"{a.delta_scale} (weights std 1)")
        print(f"{'contribution':18} {'bytes':>12} {'vs F32':>7} {'max |err|':>10} "
              f"{'rms err':>10} {'rms err / rms update':>21}")
        for r in rows:
            print(f"{r['encoding']:18} {r['bytes_per_contribution']:12d} "
                  f"{r['bytes_vs_f32']:7.2f} {r['max_abs_error']:10.2e} "
                  f"{r['rms_abs_error']:10.2e} {r['rms_error_vs_rms_update']:21.2e}")
        print(json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
