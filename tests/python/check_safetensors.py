#!/usr/bin/env python3
"""Checks a safetensors checkpoint against a manifest, using the reference implementation.

Usage: check_safetensors.py DIR MANIFEST.json

DIR is a folder holding model.safetensors or model.safetensors.index.json (sharded, as
transformers writes it), an index file, or one .safetensors file. MANIFEST.json is a list
(or {"tensors": [...]}) of {"name", "dtype" (safetensors name, e.g. "F32"), "shape",
"sha256" (hex of the tensor's raw little-endian bytes)}.

Every file is opened with the `safetensors` package, so its Rust parser validates each
header and layout. Shards whose dtypes numpy supports are loaded with
safetensors.numpy.load_file and compared array by array. numpy has no BF16 (or F8) type, so
a shard holding one is read through safetensors.safe_open instead: names, dtypes and shapes
come from safe_open (get_slice), and each tensor's bytes are sliced from the file at the
data_offsets of its JSON header, parsed here. Exits 0 only if the checkpoint holds exactly
the manifest's tensors with matching dtype, shape and sha256; prints a one-line summary.
"""

import hashlib
import json
import os
import struct
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

NUMPY_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64,
}


def shard_files(path):
    """Returns {file path: list of tensor names the index assigns it, or None}."""
    if os.path.isdir(path):
        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(single):
            return {single: None}
        if not os.path.isfile(index):
            raise ValueError(f"{path} holds neither model.safetensors nor its index")
        path = index
    if not path.endswith(".json"):
        return {path: None}
    with open(path, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    shards = {}
    folder = os.path.dirname(path)
    for name, shard in weight_map.items():
        shards.setdefault(os.path.join(folder, shard), []).append(name)
    return shards


def raw_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def read_shard(path):
    """Returns {name: (dtype name, shape list, raw little-endian bytes)}."""
    data_start, header = raw_header(path)
    header.pop("__metadata__", None)
    if all(info["dtype"] in NUMPY_DTYPES for info in header.values()):
        out = {}
        for name, arr in load_file(path).items():
            dtype = next(k for k, v in NUMPY_DTYPES.items() if np.dtype(v) == arr.dtype)
            raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
            out[name] = (dtype, list(arr.shape), raw)
        return out
    out = {}
    with safe_open(path, framework="numpy") as f, open(path, "rb") as raw_file:
        for name in f.keys():
            tensor = f.get_slice(name)
            begin, end = header[name]["data_offsets"]
            raw_file.seek(data_start + begin)
            out[name] = (tensor.get_dtype(), list(tensor.get_shape()), raw_file.read(end - begin))
    return out


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    ckpt, manifest_path = argv[1], argv[2]
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if isinstance(manifest, dict):
        manifest = manifest["tensors"]
    expected = {t["name"]: t for t in manifest}

    problems = []
    found = {}
    shards = shard_files(ckpt)
    for path, listed in shards.items():
        tensors = read_shard(path)
        if listed is not None and sorted(listed) != sorted(tensors):
            problems.append(f"{os.path.basename(path)} holds {sorted(tensors)} but the index "
                            f"lists {sorted(listed)}")
        for name, value in tensors.items():
            if name in found:
                problems.append(f"tensor {name!r} appears in more than one file")
            found[name] = value

    for name, want in expected.items():
        if name not in found:
            problems.append(f"missing tensor {name!r}")
            continue
        dtype, shape, raw = found[name]
        if dtype != want["dtype"]:
            problems.append(f"{name!r} dtype {dtype}, expected {want['dtype']}")
        if shape != list(want["shape"]):
            problems.append(f"{name!r} shape {shape}, expected {want['shape']}")
        if hashlib.sha256(raw).hexdigest() != want["sha256"].lower():
            problems.append(f"{name!r} bytes differ (sha256)")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"unexpected tensor {name!r}")

    if problems:
        print(f"FAIL {ckpt}: {len(problems)} problem(s): " + "; ".join(problems))
        return 1
    print(f"OK {ckpt}: {len(expected)} tensors in {len(shards)} file(s) match {manifest_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as e:  # a file the reference rejects, a bad manifest, a missing file
        print(f"FAIL {' '.join(sys.argv[1:])}: {type(e).__name__}: {e}")
        sys.exit(1)
