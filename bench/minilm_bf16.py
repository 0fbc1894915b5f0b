#!/usr/bin/env python3
"""Writes a copy of a prepared MiniLM folder with its F32 weights rounded to BF16
(round to nearest even), half the bytes: 45 MB fits the GPU machine's carry limit, and the
client loads BF16 checkpoints as F32. Integer buffers are dropped (the encoder ignores them).

    .venv/bin/python bench/minilm_bf16.py [SRC=models/all-MiniLM-L6-v2] [DST=models/minilm-bf16]
"""
import json
import os
import shutil
import struct
import sys

import numpy as np
from safetensors.numpy import load_file

src = sys.argv[1] if len(sys.argv) > 1 else "models/all-MiniLM-L6-v2"
dst = sys.argv[2] if len(sys.argv) > 2 else "models/minilm-bf16"
tensors = load_file(os.path.join(src, "model.safetensors"))
os.makedirs(dst, exist_ok=True)
for f in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
    if os.path.exists(os.path.join(src, f)):
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
header, blobs, offset = {}, [], 0
for name in sorted(tensors):
    a = tensors[name]
    if a.dtype != np.float32:
        continue
    bits = a.view(np.uint32)
    bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    header[name] = {"dtype": "BF16", "shape": list(a.shape),
                    "data_offsets": [offset, offset + len(bf16)]}
    blobs.append(bf16)
    offset += len(bf16)
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * ((8 - len(text) % 8) % 8)
with open(os.path.join(dst, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for b in blobs:
        f.write(b)
print(f"{dst}/model.safetensors: {len(header)} BF16 tensors, {offset} bytes")
