#!/usr/bin/python3
"""Writes the benchmark's model files: a BF16 base checkpoint and K contributions.

    make_models.py --out DIR [--model_mb 1024] [--k 16] [--seed 1] [--delta 1e-3]

DIR/model.safetensors    the base: transformer-named BF16 tensors ("model.layers.{i}...")
                         of at least --model_mb MiB, plus a small "lm_head.weight" that is
                         NOT shared (its name lacks the "model." prefix)
DIR/contrib-{k}.safetensors, k = 1..K
                         base + a small uniform random delta in [-delta, delta], rounded to
                         BF16 (round-to-nearest-even from float32); deterministic in
                         (seed, k, tensor, chunk), so contribution k is the same whatever K
DIR/models.json          the layout (tensors, shared bytes and parameters) and the files

Everything is generated chunk by chunk (8 Mi elements), so memory stays ~200 MB whatever
the model size. BF16 values are handled as uint16 bit patterns; the safetensors files are
written by the tiny writer below (8-byte little-endian header length, JSON header padded
with spaces to a multiple of 8, raw little-endian tensor bytes).
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

SHARED_PREFIX = "model."
CHUNK_ELEMS = 8 << 20
# (hidden, intermediate): Llama-7B's shapes for large models, scaled down for small ones.
SHAPES = [(4096, 11008), (2048, 5504), (1024, 2752), (512, 1376), (256, 688), (128, 344)]
LM_HEAD_ROWS = 64


def layer_tensors(i, h, inter):
    p = f"model.layers.{i}."
    return [
        (p + "input_layernorm.weight", [h]),
        (p + "self_attn.q_proj.weight", [h, h]),
        (p + "self_attn.k_proj.weight", [h, h]),
        (p + "self_attn.v_proj.weight", [h, h]),
        (p + "self_attn.o_proj.weight", [h, h]),
        (p + "post_attention_layernorm.weight", [h]),
        (p + "mlp.gate_proj.weight", [inter, h]),
        (p + "mlp.up_proj.weight", [inter, h]),
        (p + "mlp.down_proj.weight", [h, inter]),
    ]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def layout(model_mb):
    """Tensors (name, shape) whose shared part is at least model_mb MiB of BF16."""
    target = int(model_mb * (1 << 20))
    for h, inter in SHAPES:
        if 2 * sum(2 * numel(s) for _, s in layer_tensors(0, h, inter)) <= target:
            break
    tensors, total, i = [], 0, 0
    while total < target:
        for name, shape in layer_tensors(i, h, inter):
            tensors.append((name, shape))
            total += 2 * numel(shape)
            if total >= target:
                break
        i += 1
    tensors.append(("model.norm.weight", [h]))
    tensors.append(("lm_head.weight", [LM_HEAD_ROWS, h]))
    return tensors


def header_bytes(tensors, metadata=None):
    """The safetensors header (length prefix included) for BF16 tensors in this order."""
    h, off = {}, 0
    if metadata:
        h["__metadata__"] = metadata
    for name, shape in tensors:
        n = 2 * numel(shape)
        h[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    js = json.dumps(h, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js


def read_header(path):
    """(tensors, data_start): tensors = [(name, dtype, shape, begin, end)] in file order."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    out = [(k, v["dtype"], v["shape"], v["data_offsets"][0], v["data_offsets"][1])
           for k, v in h.items()]
    out.sort(key=lambda t: t[3])
    return out, 8 + n


def f32_to_bf16_bits(f, tmp, out):
    """Round-to-nearest-even float32 -> bf16 bit patterns. Clobbers f and tmp."""
    u = f.view(np.uint32)
    np.right_shift(u, 16, out=tmp)
    tmp &= np.uint32(1)
    tmp += np.uint32(0x7FFF)
    u += tmp
    out[:] = u.view(np.uint16)[1::2]  # little-endian: the high half of each word


def bf16_bits_to_f32(bits, out):
    """uint16 bf16 bit patterns -> float32 (exact)."""
    u = out.view(np.uint32)
    u[:] = bits
    u <<= np.uint32(16)
    return out


def generate(out_dir, model_mb, k, seed, delta):
    tensors = layout(model_mb)
    os.makedirs(out_dir, exist_ok=True)
    meta = {"generator": "coldfuse bench/make_models.py", "seed": str(seed)}
    base_path = os.path.join(out_dir, "model.safetensors")
    contrib_paths = [os.path.join(out_dir, f"contrib-{j}.safetensors") for j in range(1, k + 1)]
    files = [open(p + ".tmp", "wb") for p in [base_path] + contrib_paths]
    for j, f in enumerate(files):
        f.write(header_bytes(tensors, dict(meta, role="base" if j == 0 else f"contrib-{j}")))

    base_f32 = np.empty(CHUNK_ELEMS, np.float32)
    work = np.empty(CHUNK_ELEMS, np.float32)
    tmp = np.empty(CHUNK_ELEMS, np.uint32)
    bits = np.empty(CHUNK_ELEMS, np.uint16)
    scale = np.float32(0.035)  # uniform [-0.035, 0.035): std ~0.02, like an initialised LLM
    t0 = time.time()
    for ti, (name, shape) in enumerate(tensors):
        n_total = numel(shape)
        norm = name.endswith("layernorm.weight") or name == "model.norm.weight"
        for ci, start in enumerate(range(0, n_total, CHUNK_ELEMS)):
            n = min(CHUNK_ELEMS, n_total - start)
            b, w, t, o = base_f32[:n], work[:n], tmp[:n], bits[:n]
            if norm:
                b.fill(1.0)
            else:
                np.random.default_rng([seed, 0, ti, ci]).random(out=b, dtype=np.float32)
                b -= np.float32(0.5)
                b *= np.float32(2) * scale
            f32_to_bf16_bits(b, t, o)
            files[0].write(o)
            bf16_bits_to_f32(o, b)  # the base as stored, exactly
            for j in range(1, k + 1):
                np.random.default_rng([seed, j, ti, ci]).random(out=w, dtype=np.float32)
                w -= np.float32(0.5)
                w *= np.float32(2 * delta)
                w += b
                f32_to_bf16_bits(w, t, o)
                files[j].write(o)
    for f in files:
        f.close()
    for p in [base_path] + contrib_paths:
        os.replace(p + ".tmp", p)
    elapsed = time.time() - t0

    shared = [(n, s) for n, s in tensors if n.startswith(SHARED_PREFIX)]
    info = {
        "model_mb": model_mb,
        "k": k,
        "seed": seed,
        "delta": delta,
        "shared_prefix": SHARED_PREFIX,
        "tensors": [{"name": n, "shape": s, "bytes": 2 * numel(s)} for n, s in tensors],
        "num_tensors": len(tensors),
        "num_shared_tensors": len(shared),
        "shared_params": sum(numel(s) for _, s in shared),
        "shared_bytes": sum(2 * numel(s) for _, s in shared),
        "total_bytes": sum(2 * numel(s) for _, s in tensors),
        "file_bytes": os.path.getsize(base_path),
        "base": base_path,
        "contributions": contrib_paths,
        "generate_s": elapsed,
    }
    with open(os.path.join(out_dir, "models.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--model_mb", type=float, default=1024,
                    help="shared BF16 bytes of the model, at least this many MiB")
    ap.add_argument("--k", type=int, default=16, help="number of contributions")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--delta", type=float, default=1e-3,
                    help="contributions differ from the base by uniform [-delta, delta]")
    a = ap.parse_args()
    if a.k < 1 or a.model_mb <= 0:
        sys.exit("make_models: --k must be >= 1 and --model_mb > 0")
    info = generate(a.out, a.model_mb, a.k, a.seed, a.delta)
    print(json.dumps({k: v for k, v in info.items() if k != "tensors"}))


if __name__ == "__main__":
    main()
