"""An independent numpy implementation of docs/protocol.md "Fusion arithmetic", rules
1-10, written from the document alone: it shares no code with the server, and uses the
Python client's own `_codec` only to encode doubles in a dtype (rule 1's encoding).

Every function works on whole tensors as float64 numpy arrays, one tensor at a time, with
explicit loops over contributions where the rules fix an order (never np.sum, whose
pairwise summation would round differently).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from coldfuse import _codec
from coldfuse.v1 import tensor_pb2

F64 = tensor_pb2.F64


@dataclass
class Contribution:
    """One fused contribution, as the rules see it."""
    sent: Dict[str, np.ndarray]       # name -> values as sent, decoded to float64
    sent_dtype: Dict[str, int]        # name -> dtype code as sent
    delta: bool = False               # the values are x - (trained-from base)
    num_examples: int = 1
    trained_from: Optional[Dict[str, np.ndarray]] = None  # set when stale
    weight: float = 1.0               # staleness weight (1 when fresh)
    delta_norm: float = 0.0           # as the server reports it (rule 6)
    id: int = 0                       # its contribution id (DARE's masks)


def enc(x: np.ndarray, code: int) -> np.ndarray:
    """Rule 1's encoding of doubles in `code`, decoded back to float64."""
    return _codec.to_float64(_codec.encode(np.asarray(x, dtype=np.float64), code), code)


def state_round(x: np.ndarray, base_code: int) -> np.ndarray:
    """S(x): binary32, or binary64 for F64 tensors."""
    if base_code == F64:
        return np.asarray(x, dtype=np.float64)
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def fusion_weights(method: str, contributions: List[Contribution]) -> List[float]:
    w = [float(c.num_examples) if method in ("weighted", "clipped") else 1.0
         for c in contributions]
    total = 0.0
    for x in w:
        total += x
    return [x / total for x in w]


def median_of(values: List[float]) -> float:
    v = sorted(values)
    k = len(v)
    return v[k // 2] if k % 2 else (v[k // 2 - 1] + v[k // 2]) / 2


# ------------------------------------------------------------------ rules 1-5 (plain)

def in_base_dtype(c: Contribution, name: str, b: np.ndarray, code: int) -> np.ndarray:
    """Rule 1: a contribution's tensor in the base's dtype (as float64 values)."""
    x = c.sent[name]
    if not c.delta and c.trained_from is None and c.sent_dtype[name] == code:
        return x
    if c.trained_from is not None:
        u = x if c.delta else x - c.trained_from[name]
        if c.weight != 1.0:
            u = u * c.weight
        return enc(b + u, code)
    if c.delta:
        return enc(b + x, code)
    return enc(x, code)


def legacy_fuse(method: str, base: Dict[str, np.ndarray], codes: Dict[str, int],
                contributions: List[Contribution], trim_fraction: float = 0.2,
                clip_factor: float = 1.0) -> Dict[str, np.ndarray]:
    """Rules 1-5: the new base (float64 values of each tensor in its dtype)."""
    k = len(contributions)
    out = {}
    for name, b in base.items():
        code = codes[name]
        xs = [in_base_dtype(c, name, b, code) for c in contributions]
        if method in ("mean", "weighted"):
            w = fusion_weights(method, contributions)
            if code == F64:
                acc = np.zeros_like(b)
                for wk, xk in zip(w, xs):
                    acc = acc + wk * xk
                out[name] = enc(acc, code)
            else:
                acc = np.zeros(b.shape, dtype=np.float32)
                for wk, xk in zip(w, xs):
                    acc = acc + np.float32(wk) * xk.astype(np.float32)
                out[name] = enc(acc.astype(np.float64), code)
        elif method in ("median", "trimmed"):
            stacked = np.sort(np.stack(xs), axis=0)
            if method == "median":
                r = stacked[k // 2] if k % 2 else (stacked[k // 2 - 1] + stacked[k // 2]) / 2
            else:
                t = math.floor(trim_fraction * k)
                r = np.zeros_like(b)
                for i in range(t, k - t):
                    r = r + stacked[i]
                r = r / (k - 2 * t)
            out[name] = enc(r, code)
        elif method == "clipped":
            coef = clip_coefficients(contributions, clip_factor)
            acc = b.copy()
            for ck, xk in zip(coef, xs):
                if ck != 0:
                    acc = acc + ck * (xk - b)
            out[name] = enc(acc, code)
        else:
            raise ValueError(method)
    return out


def clip_coefficients(contributions: List[Contribution], clip_factor: float) -> List[float]:
    w = fusion_weights("clipped", contributions)
    norms = [c.weight * c.delta_norm if c.trained_from is not None else c.delta_norm
             for c in contributions]
    clip = max(clip_factor * median_of(norms), np.finfo(np.float64).tiny)
    return [wk * (1.0 if n <= clip else clip / n) for wk, n in zip(w, norms)]


# ------------------------------------------------------------------ rules 8-10

def update_of(c: Contribution, name: str, b: np.ndarray) -> np.ndarray:
    """Rule 8: the contribution's update, in double, never rounded to the base dtype."""
    x = c.sent[name]
    if c.trained_from is not None:
        u = x if c.delta else x - c.trained_from[name]
        return u * c.weight if c.weight != 1.0 else u
    return x if c.delta else x - b


MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(z):
    """SplitMix64's finaliser on uint64 scalars or arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def dare_keep(seed: int, round_number: int, contribution_id: int, tensor: int, n: int,
              drop_rate: float) -> np.ndarray:
    """Rule 13's mask of one tensor: True where the value is kept."""
    h = splitmix64(np.uint64(seed))
    h = splitmix64(h ^ np.uint64(round_number))
    h = splitmix64(h ^ np.uint64(contribution_id))
    h = splitmix64(h ^ np.uint64(tensor))
    r = splitmix64(h ^ np.arange(n, dtype=np.uint64)) >> np.uint64(11)
    below = np.uint64(math.floor(drop_rate * 2.0 ** 53))
    return r >= below


def ties_thresholds(contributions: List[Contribution], base: Dict[str, np.ndarray],
                    density: float) -> List[float]:
    """Rule 12: per update, the ceil(density × N)-th largest magnitude over the model."""
    out = []
    for c in contributions:
        mags = np.concatenate([np.abs(update_of(c, n, b)) for n, b in base.items()])
        rank = max(1, min(mags.size, math.ceil(density * mags.size)))
        out.append(float(np.sort(mags)[mags.size - rank]))
    return out


def fused_update(method: str, name: str, b: np.ndarray, contributions: List[Contribution],
                 trim_fraction: float = 0.2, clip_factor: float = 1.0, merge_scale: float = 1.0,
                 thresholds: Optional[List[float]] = None, dare_drop_rate: float = 0.5,
                 dare_seed: int = 0, round_number: int = 0, tensor_index: int = 0) -> np.ndarray:
    """Rules 9, 11-13: Δ of one tensor."""
    us = [update_of(c, name, b) for c in contributions]
    k = len(us)
    if method == "task_arithmetic":
        d = np.zeros_like(b)
        for u in us:
            d = d + merge_scale * u
        return d
    if method == "dare":
        d = np.zeros_like(b)
        keep = 1 - dare_drop_rate
        for c, u in zip(contributions, us):
            mask = dare_keep(dare_seed, round_number, c.id, tensor_index, u.size, dare_drop_rate)
            d = d + merge_scale * np.where(mask, u / keep, 0.0)
        return d
    if method == "ties":
        total, pos, neg = np.zeros_like(b), np.zeros_like(b), np.zeros_like(b)
        pos_n, neg_n = np.zeros(b.shape), np.zeros(b.shape)
        for tau, u in zip(thresholds, us):
            t = np.where(np.abs(u) >= tau, u, 0.0)
            total = total + t
            pos = pos + np.where(t > 0, t, 0.0)
            neg = neg + np.where(t < 0, t, 0.0)
            pos_n += t > 0
            neg_n += t < 0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, merge_scale * (pos / pos_n),
                            np.where(total < 0, merge_scale * (neg / neg_n), 0.0))
    if method in ("mean", "weighted", "clipped"):
        coef = (clip_coefficients(contributions, clip_factor) if method == "clipped"
                else fusion_weights(method, contributions))
        d = np.zeros_like(b)
        for ck, uk in zip(coef, us):
            if ck != 0:
                d = d + ck * uk
        return d
    stacked = np.sort(np.stack(us), axis=0)
    if method == "median":
        return stacked[k // 2] if k % 2 else (stacked[k // 2 - 1] + stacked[k // 2]) / 2
    t = math.floor(trim_fraction * k)
    r = np.zeros_like(b)
    for i in range(t, k - t):
        r = r + stacked[i]
    return r / (k - 2 * t)


@dataclass
class Optimizer:
    kind: str                 # plain (a merging method's b + Δ), sgd, nesterov, adam, yogi
    lr: float = 1.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    bias_correction: bool = False


@dataclass
class BaseState:
    """A base with the optimizer state stored next to it and its step count."""
    values: Dict[str, np.ndarray]
    m: Dict[str, np.ndarray] = field(default_factory=dict)
    v: Dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0


def outer_step(opt: Optimizer, base: BaseState, codes: Dict[str, int], method: str,
               contributions: List[Contribution], **options) -> BaseState:
    """Rule 10: the next base and its state from `base` (its values and stored state).
    options: the method's (trim_fraction, ..., ties_density) and, for DARE, round_number;
    order: the manifest's tensor names (DARE's tensor index)."""
    t = base.step + 1
    options = dict(options)
    order = options.pop("order", list(base.values))
    if method == "ties":
        options["thresholds"] = ties_thresholds(contributions, base.values,
                                                options.pop("ties_density", 0.2))
    new = BaseState(values={}, step=t)
    c1, c2 = 1 - opt.beta1, 1 - opt.beta2
    alpha = opt.lr
    if opt.bias_correction:
        alpha = (opt.lr * math.sqrt(1 - math.pow(opt.beta2, t))) / (1 - math.pow(opt.beta1, t))
    for name, b in base.values.items():
        code = codes[name]
        d = fused_update(method, name, b, contributions, tensor_index=order.index(name),
                         **options)
        zero = np.zeros_like(b)
        m = base.m.get(name, zero)
        v = base.v.get(name, zero)
        if opt.kind == "plain":
            new.values[name] = enc(b + d, code)
        elif opt.kind == "sgd" and opt.momentum == 0:
            new.values[name] = enc(b + opt.lr * d, code)
        elif opt.kind == "sgd":
            m2 = state_round(opt.momentum * m + d, code)
            new.m[name] = m2
            new.values[name] = enc(b + opt.lr * m2, code)
        elif opt.kind == "nesterov":
            m2 = state_round(opt.momentum * m + d, code)
            new.m[name] = m2
            new.values[name] = enc(b + opt.lr * (d + opt.momentum * m2), code)
        elif opt.kind in ("adam", "yogi"):
            m2 = state_round(opt.beta1 * m + c1 * d, code)
            g2 = d * d
            if opt.kind == "adam":
                v2 = state_round(opt.beta2 * v + c2 * g2, code)
            else:
                v2 = state_round(v - (c2 * g2) * np.sign(v - g2), code)
            new.m[name], new.v[name] = m2, v2
            new.values[name] = enc(b + (alpha * m2) / (np.sqrt(v2) + opt.tau), code)
        else:
            raise ValueError(opt.kind)
    return new
