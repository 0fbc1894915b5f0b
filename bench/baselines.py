#!/usr/bin/python3
"""In-memory fusion baselines over the benchmark's safetensors contributions.

    baselines.py numpy|torch --prefix model. FILE... [--weights 1000,1000,...]

One measurement per process (so peak RSS is this method's alone); prints one JSON line:
load_s (reading every contribution into memory), aggregate_s, total_s = load_s +
aggregate_s (interpreter start and imports excluded), peak_rss_bytes (getrusage
ru_maxrss), and a short fingerprint of the result.

numpy  FedAvg as Flower's `flwr.server.strategy.aggregate.aggregate` does it: every
       contribution loaded as a list of float32 ndarrays, then
           weighted = [[layer * n for layer in weights] for weights, n in results]
           [reduce(np.add, layers) / total for layers in zip(*weighted)]
       so it holds K float32 models, K weighted copies, and the result.
torch  PyTorch state-dict averaging: each contribution read whole and viewed as a dict
       of BF16 tensors (torch.frombuffer, no copy), a float32 accumulator per tensor,
       acc.add_(t.float(), alpha=w) for every contribution, then acc.div_(sum of w).

Only tensors whose name starts with --prefix are fused (what coldfuse fuses).
estimate() (used by bench.py) predicts a method's peak memory without loading anything.
"""
import argparse
import json
import os
import resource
import sys
import time
from functools import reduce

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_models import read_header  # noqa: E402


def shared_tensors(path, prefix):
    tensors, start = read_header(path)
    out = []
    for name, dtype, shape, b, e in tensors:
        if not name.startswith(prefix):
            continue
        if dtype != "BF16":
            sys.exit(f"baselines: {path}: {name} is {dtype}, only BF16 is supported")
        out.append((name, shape, start + b, e - b))
    return out


def estimate(method, files, prefix):
    t = shared_tensors(files[0], prefix)
    params = sum(n // 2 for _, _, _, n in t)
    largest = max(n // 2 for _, _, _, n in t)
    k = len(files)
    if method == "numpy":
        # K float32 models + K weighted copies + the float32 result + reduce temporaries,
        # + the interpreter with numpy imported (~30 MB).
        return (2 * k + 1) * 4 * params + 3 * 4 * largest + (40 << 20)
    # K whole files (BF16) + the float32 accumulators + one float32 temporary,
    # + the interpreter with torch imported (~270 MB).
    file_bytes = sum(os.path.getsize(f) for f in files)
    return file_bytes + 4 * params + 4 * largest + (300 << 20)


def load_numpy(path, prefix):
    import numpy as np
    arrays = []
    with open(path, "rb") as f:
        for name, shape, off, nbytes in shared_tensors(path, prefix):
            f.seek(off)
            bits = np.fromfile(f, dtype=np.uint16, count=nbytes // 2)
            a = bits.astype(np.uint32)
            del bits
            a <<= np.uint32(16)
            arrays.append(a.view(np.float32).reshape(shape))
    return arrays


def flower_aggregate(results):
    """flwr.server.strategy.aggregate.aggregate, verbatim in substance."""
    import numpy as np
    num_examples_total = sum(num_examples for (_, num_examples) in results)
    weighted_weights = [
        [layer * num_examples for layer in weights] for weights, num_examples in results
    ]
    weights_prime = [
        reduce(np.add, layer_updates) / num_examples_total
        for layer_updates in zip(*weighted_weights)
    ]
    return weights_prime


def run_numpy(files, weights, prefix):
    import numpy as np
    t0 = time.perf_counter()
    results = [(load_numpy(f, prefix), w) for f, w in zip(files, weights)]
    t1 = time.perf_counter()
    fused = flower_aggregate(results)
    t2 = time.perf_counter()
    first = fused[0].reshape(-1)[:4].tolist()
    return t1 - t0, t2 - t1, first, f"{fused[0].dtype} (numpy {np.__version__})"


def run_torch(files, weights, prefix):
    import torch
    t0 = time.perf_counter()
    state_dicts = []
    for f in files:
        buf = bytearray(os.path.getsize(f))
        with open(f, "rb") as fh:
            view = memoryview(buf)
            got = 0
            while got < len(buf):
                n = fh.readinto(view[got:])
                if not n:
                    sys.exit(f"baselines: short read of {f}")
                got += n
        sd = {}
        for name, shape, off, nbytes in shared_tensors(f, prefix):
            sd[name] = torch.frombuffer(buf, dtype=torch.bfloat16, count=nbytes // 2,
                                        offset=off).view(shape)
        state_dicts.append(sd)
    t1 = time.perf_counter()
    total = float(sum(weights))
    fused = {}
    for name in state_dicts[0]:
        acc = torch.zeros(state_dicts[0][name].shape, dtype=torch.float32)
        for sd, w in zip(state_dicts, weights):
            acc.add_(sd[name].float(), alpha=float(w))
        acc.div_(total)
        fused[name] = acc
    t2 = time.perf_counter()
    first = next(iter(fused.values())).reshape(-1)[:4].tolist()
    return t1 - t0, t2 - t1, first, f"float32 (torch {torch.__version__}, " \
        f"{torch.get_num_threads()} threads)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("method", choices=["numpy", "torch"])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--prefix", default="model.")
    ap.add_argument("--weights", default="", help="comma-separated; default 1000 each")
    a = ap.parse_args()
    weights = [float(w) for w in a.weights.split(",")] if a.weights else [1000.0] * len(a.files)
    if len(weights) != len(a.files):
        sys.exit("baselines: --weights needs one value per file")
    run = run_numpy if a.method == "numpy" else run_torch
    load_s, agg_s, first, dtype = run(a.files, weights, a.prefix)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "method": a.method, "k": len(a.files), "load_s": load_s, "aggregate_s": agg_s,
        "total_s": load_s + agg_s, "peak_rss_bytes": rss,
        "estimate_bytes": estimate(a.method, a.files, a.prefix),
        "result_dtype": dtype, "result_first_values": first,
    }))


if __name__ == "__main__":
    main()
