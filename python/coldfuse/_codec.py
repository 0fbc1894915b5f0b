"""Element types and safetensors files, with numpy only (torch is optional).

Conversions round exactly as the C++ client does (common/dtype.cc): values are taken to
float64, and rounded once to the type sent (F16/BF16 through a float32 rounded to odd,
which makes the two roundings one). So the same weights pushed from Python and from
`coldfusectl push` are the same bytes.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from coldfuse.v1 import tensor_pb2

# proto dtype <-> safetensors name, element size.
DTYPES = {
    tensor_pb2.F32: ("F32", 4),
    tensor_pb2.F16: ("F16", 2),
    tensor_pb2.BF16: ("BF16", 2),
    tensor_pb2.F64: ("F64", 8),
}
BY_NAME = {name: code for code, (name, _) in DTYPES.items()}
# The numpy type holding each dtype's raw bytes (BF16 as its 16-bit pattern).
RAW = {tensor_pb2.F32: np.dtype("<f4"), tensor_pb2.F16: np.dtype("<f2"),
       tensor_pb2.BF16: np.dtype("<u2"), tensor_pb2.F64: np.dtype("<f8")}

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


def dtype_name(code: int) -> str:
    return DTYPES[code][0] if code in DTYPES else f"dtype {code}"


def parse_dtype(name: str) -> int:
    """'f32', 'F16', 'bf16', 'f64' -> the proto enum; ValueError otherwise."""
    code = BY_NAME.get(name.upper())
    if code is None:
        raise ValueError(f"unknown dtype {name!r}: use f32, f16, bf16 or f64")
    return code


def num_elements(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise ValueError(f"negative dimension in {list(shape)}")
        n *= d
    return n


def byte_length(spec) -> int:
    size = 1 if spec.dtype == tensor_pb2.I8 else DTYPES[spec.dtype][1]
    return num_elements(spec.shape) * size


# -- conversions (to and from float64, as common/dtype.cc)

def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _round_to_odd_f32(d: np.ndarray) -> np.ndarray:
    """float64 -> float32, inexact values truncated toward zero with the lowest bit set."""
    f = d.astype(np.float32)
    back = f.astype(np.float64)
    inexact = (back != d) & ~np.isnan(d)
    if inexact.any():
        too_far = inexact & (np.abs(back) > np.abs(d))
        f[too_far] = np.nextafter(f[too_far], np.float32(0))
        bits = f.view(np.uint32)
        bits[inexact] |= np.uint32(1)
    return f


def f32_to_bf16_bits(f: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(f, dtype=np.float32).view(np.uint32)
    nan = np.isnan(f)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = ((bits + rounding) >> np.uint32(16)).astype(np.uint16)
    if nan.any():
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return out


def to_float64(raw: np.ndarray, code: int) -> np.ndarray:
    """Raw values of dtype `code` (as RAW[code]) as float64."""
    if code == tensor_pb2.BF16:
        return bf16_bits_to_f32(raw).astype(np.float64)
    return raw.astype(np.float64)


def encode(values: np.ndarray, code: int) -> np.ndarray:
    """float32/float64 values rounded once to dtype `code`, as its raw array (RAW[code])."""
    if code == tensor_pb2.F64:
        return values.astype("<f8")
    if code == tensor_pb2.F32:
        return values.astype("<f4")
    f = _round_to_odd_f32(values.astype(np.float64)) if values.dtype == np.float64 else \
        values.astype(np.float32)
    if code == tensor_pb2.F16:
        return f.astype("<f2")
    return f32_to_bf16_bits(f)


def quantize_int8(d: np.ndarray, block: int) -> Tuple[np.ndarray, np.ndarray]:
    """8-bit deltas (docs/protocol.md "8-bit deltas"), exactly as common/int8_delta.cc:
    per block of `block` values of the float64 deltas `d`, s = f32(max|d| / 127), and
    q = clamp(rint(d / s), -127, 127) (ties to even; 0 where s is 0). Returns (s as
    float32, q as int8)."""
    d = np.ascontiguousarray(d, dtype=np.float64).reshape(-1)
    if not np.isfinite(d).all():
        raise ValueError("a delta holds a NaN or infinity: a diverged run cannot be sent")
    n = d.size
    blocks = (n + block - 1) // block
    padded = np.zeros(blocks * block)
    padded[:n] = np.abs(d)
    s = (padded.reshape(blocks, block).max(axis=1) / 127.0).astype(np.float32)
    per_value = np.repeat(s.astype(np.float64), block)[:n]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(per_value == 0, 0.0, np.rint(d / per_value))
    return s, np.clip(q, -127, 127).astype(np.int8)


def convert(raw: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return raw
    return encode(to_float64(raw, src), dst)


# -- safetensors (https://github.com/huggingface/safetensors: 8-byte header length, JSON
#    header, then the data); only the float types coldfuse moves.

@dataclass
class Entry:
    name: str
    dtype: int
    shape: Tuple[int, ...]
    begin: int  # absolute file offsets of the data
    end: int


class SafetensorsFile:
    """A safetensors file opened read-only and memory-mapped; tensors come out as numpy
    views of the map (no copy). Raises ValueError for a malformed file."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise ValueError(f"{path}: header length {n} does not fit the file")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: header is not a JSON object")
        self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: Dict[str, Entry] = {}
        data_start = 8 + n
        for name, info in header.items():
            try:
                begin, end = info["data_offsets"]
                shape = tuple(int(d) for d in info["shape"])
                dtype = info["dtype"]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: tensor {name!r} has a malformed entry") from None
            if dtype not in BY_NAME:
                continue  # not a float coldfuse moves (e.g. an I64 buffer)
            code = BY_NAME[dtype]
            if not (0 <= begin <= end <= size - data_start) or \
                    end - begin != num_elements(shape) * DTYPES[code][1]:
                raise ValueError(f"{path}: tensor {name!r} has offsets that do not fit")
            self.entries[name] = Entry(name, code, shape, data_start + begin, data_start + end)
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if size > 0 else None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's raw values (RAW[dtype]), shaped, as a read-only view of the file."""
        e = self.entries[name]
        flat = self._map[e.begin:e.end].view(RAW[e.dtype])
        return flat.reshape(e.shape)


def write_header(f, specs: List[Tuple[str, int, Tuple[int, ...]]],
                 metadata: Optional[Mapping[str, str]] = None) -> int:
    """Writes the 8-byte length and JSON header for tensors (name, dtype, shape) laid out
    in order; returns where the data starts. The header is padded with spaces to a
    multiple of 8 bytes, as the reference does."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, code, shape in specs:
        n = num_elements(shape) * DTYPES[code][1]
        header[name] = {"dtype": DTYPES[code][0], "shape": list(shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    return 8 + len(text)


def write_safetensors(path: str, tensors: Mapping[str, Tuple[int, np.ndarray]],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes {name: (dtype, raw array)} in order to `path` (atomically)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        write_header(f, [(n, c, tuple(a.shape)) for n, (c, a) in tensors.items()], metadata)
        for _, (code, a) in tensors.items():
            f.write(np.ascontiguousarray(a, dtype=RAW[code]).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
