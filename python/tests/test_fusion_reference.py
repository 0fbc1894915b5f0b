"""Every fused base, byte for byte, against an independent numpy implementation of
docs/protocol.md's fusion rules (fusion_reference.py), through a real coldfused with TLS
and tokens: the plain optimizer is today's fusion for every method, and each outer
optimizer's base and state follow the rules over four fusions, including a restart (state
read back from RocksDB), a stale contribution, a 16-bit delta, and a rollback followed by
a restart (the next base steps from the good base's own state)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from coldfuse import _codec
from coldfuse.v1 import coldfuse_pb2

import fusion_reference as ref

SHAPES = {"a": (600, 500), "b": (64,), "c": (3, 7)}  # "a" spans two storage chunks
EXAMPLES = {"alice": 10, "bob": 30, "carol": 20}


class Run:
    """One server and the reference's view of its bases."""

    def __init__(self, make_server, tmp_path, method, init_flags, base_dtype="F32",
                 int8=False, **options):
        self.tmp = tmp_path
        self.int8 = int8  # the script's deltas as 8-bit deltas
        self.method = method
        self.options = options
        self.rng = np.random.default_rng(13)
        self.server = make_server("--min_contributions=3", "--round_timeout_s=0",
                                  "--max_staleness=4")
        self.server.ctl("token", "create", "--name=carol", "--role=contributor",
                        f"--out={self.server.token('carol')}")
        code = _codec.BY_NAME[base_dtype]
        self.codes = {n: code for n in SHAPES}
        values = {n: ref.enc(self.rng.standard_normal(s).reshape(-1), code)
                  for n, s in SHAPES.items()}
        _codec.write_safetensors(
            str(tmp_path / "v0.safetensors"),
            {n: (code, _codec.encode(values[n], code).reshape(SHAPES[n])) for n in SHAPES})
        self.server.ctl("init", f"--from={tmp_path / 'v0.safetensors'}", *init_flags)
        self.bases = {0: ref.BaseState(values=values)}
        with self.server.client("eve") as c:
            self.order = [t.name for t in c.status().model.manifest.tensors]
        self.pending = {}
        self.blocks = {}  # who -> the int8 block size of their pending push

    def push(self, who, version, *, delta=False, send_dtype=None, scale=1e-2, int8_block=0):
        """`who` contributes a model fine-tuned from base `version` (random here)."""
        if self.int8 and delta:
            int8_block, send_dtype = (32 if send_dtype else 100), None
        base = self.bases[version].values
        x = {n: (base[n] + scale * self.rng.standard_normal(base[n].size)).astype(np.float32)
             for n in SHAPES}
        path = self.tmp / f"{who}.safetensors"
        _codec.write_safetensors(str(path), {n: (_codec.BY_NAME["F32"], x[n].reshape(SHAPES[n]))
                                             for n in SHAPES})
        encoding = "delta_int8" if int8_block else ("delta" if delta else "full")
        with self.server.client(who) as c:
            pushed = c.push(str(path), num_examples=EXAMPLES[who], from_base=version,
                            encoding=encoding, send_dtype=send_dtype,
                            int8_block_size=int8_block or 64)
        if int8_block:
            # The server decodes u = q·s (exact in double); within half a scale of d.
            sent = {}
            for n in SHAPES:
                d = x[n].astype(np.float64) - base[n]
                s, q = _codec.quantize_int8(d, int8_block)
                s64 = np.repeat(s.astype(np.float64), int8_block)[:d.size]
                sent[n] = q.astype(np.float64) * s64
                assert np.all(np.abs(sent[n] - d) <= 0.5 * s64 * (1 + 1e-12))
            # A quarter of F32 and its scales: 1 + 4/B bytes per value.
            assert pushed.bytes == sum(_codec.num_elements(v) + 4 * (
                (_codec.num_elements(v) + int8_block - 1) // int8_block) for v in SHAPES.values())
            self.blocks[who] = int8_block
            self.pending[who] = (version, ref.Contribution(
                sent=sent, sent_dtype={n: _codec.BY_NAME["F64"] for n in SHAPES}, delta=True,
                num_examples=EXAMPLES[who]))
            return
        sent_code = _codec.BY_NAME[send_dtype.upper()] if send_dtype else _codec.BY_NAME["F32"]
        sent = {}
        for n in SHAPES:
            v = x[n].astype(np.float64) - base[n] if delta else x[n].astype(np.float64)
            sent[n] = ref.enc(v, sent_code)
        self.pending[who] = (version, ref.Contribution(
            sent=sent, sent_dtype={n: sent_code for n in SHAPES}, delta=delta,
            num_examples=EXAMPLES[who]))

    def fuse(self, new_version, round_base, optimizer=None):
        """Waits for `new_version`, then checks it (and returns the reference's)."""
        with self.server.client("eve") as c:  # an evaluator: reads rounds, pulls bases
            c.wait_for_base(new_version, timeout=120)
            info = [r for r in c.rounds() if r.result_base_version == new_version][0]
            contributions = []
            for ci in info.contributions:  # ascending id: the rules' order
                version, contribution = self.pending.pop(ci.contributor)
                assert ci.trained_from_base == version
                block = self.blocks.pop(ci.contributor, 0)
                assert ci.int8_block_size == block
                assert (ci.encoding == coldfuse_pb2.DELTA_INT8) == (block > 0)
                if version != round_base:
                    contribution.trained_from = self.bases[version].values
                    contribution.weight = ci.staleness_weight
                    assert ci.staleness_weight == (1 + ci.staleness) ** -0.5
                contribution.delta_norm = ci.delta_norm
                contribution.id = ci.id
                own = math.sqrt(sum(float(np.dot(u, u)) for u in (
                    contribution.sent[n] if contribution.delta else
                    contribution.sent[n] - self.bases[version].values[n] for n in SHAPES)))
                assert contribution.delta_norm == pytest.approx(own, rel=1e-12)
                contributions.append(contribution)
            base = self.bases[round_base]
            if optimizer is None:
                made = ref.BaseState(values=ref.legacy_fuse(
                    self.method, base.values, self.codes, contributions, **self.options))
            else:
                made = ref.outer_step(optimizer, base, self.codes, self.method, contributions,
                                      round_number=info.number, order=self.order,
                                      **self.options)
            self.bases[new_version] = made
            pulled = c.pull(str(self.tmp / f"pulled-v{new_version}.safetensors"), new_version)
            assert [t.name for t in pulled.manifest.tensors] == self.order
            got = _codec.SafetensorsFile(pulled.path)
            for n in SHAPES:
                want = _codec.encode(made.values[n], self.codes[n]).tobytes()
                raw = np.ascontiguousarray(got.raw(n)).tobytes()
                differ = int(np.count_nonzero(
                    _codec.to_float64(got.raw(n), self.codes[n]).reshape(-1) != made.values[n]))
                assert raw == want, f"base v{new_version} tensor {n}: {differ} values differ"
            os.unlink(pulled.path)

    def script(self, optimizer=None):
        """Four fusions: a restart, a stale contribution, a BF16 delta, a rollback."""
        for who in ("alice", "bob", "carol"):
            self.push(who, 0)
        self.fuse(1, 0, optimizer)
        self.server.stop()
        self.server.start()
        self.push("alice", 1)
        self.push("bob", 1)
        self.push("carol", 0, delta=self.int8)  # stale: from v0, fused into v2 × 2^-0.5
        self.fuse(2, 1, optimizer)
        self.push("alice", 2)
        self.push("bob", 2, delta=True, send_dtype="bf16")
        self.push("carol", 2, delta=True)
        self.fuse(3, 2, optimizer)
        self.server.ctl("rollback", "--base=1", "--reason=reference test")
        self.server.stop()
        self.server.start()
        for who in ("carol", "alice", "bob"):
            self.push(who, 1)
        self.fuse(4, 1, optimizer)  # from v1 and v1's state, at step 2
        if optimizer is not None:
            assert self.bases[4].step == 2


PLAIN_METHODS = {
    "mean": ([], {}),
    "weighted": (["--fusion=weighted"], {}),
    "median": (["--fusion=median"], {}),
    "trimmed": (["--fusion=trimmed", "--trim_fraction=0.34"], {"trim_fraction": 0.34}),
    "clipped": (["--fusion=clipped", "--clip_factor=0.8"], {"clip_factor": 0.8}),
}


@pytest.mark.parametrize("method", sorted(PLAIN_METHODS))
def test_the_plain_optimizer_is_todays_fusion(make_server, tmp_path, method):
    flags, options = PLAIN_METHODS[method]
    # Named explicitly for all but one: unset and OUTER_PLAIN are the same fusion.
    outer = [] if method == "mean" else ["--outer_optimizer=plain"]
    run = Run(make_server, tmp_path, method, flags + outer, **options)
    run.script()


OPTIMIZERS = {
    "sgd": (["--outer_optimizer=sgd"], ref.Optimizer("sgd", lr=1.0, momentum=0.9)),
    "sgd-momentum0": (["--outer_optimizer=sgd", "--outer_momentum=0", "--outer_lr=0.5"],
                      ref.Optimizer("sgd", lr=0.5, momentum=0.0)),
    "nesterov": (["--outer_optimizer=nesterov"], ref.Optimizer("nesterov", lr=0.7, momentum=0.9)),
    "adam": (["--outer_optimizer=adam", "--outer_lr=0.01", "--outer_bias_correction"],
             ref.Optimizer("adam", lr=0.01, bias_correction=True)),
    "yogi": (["--outer_optimizer=yogi", "--outer_lr=0.02", "--outer_beta1=0.8",
              "--outer_beta2=0.95", "--outer_tau=0.01"],
             ref.Optimizer("yogi", lr=0.02, beta1=0.8, beta2=0.95, tau=0.01)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_an_outer_optimizer_follows_the_rules(make_server, tmp_path, name):
    flags, optimizer = OPTIMIZERS[name]
    Run(make_server, tmp_path, "mean", flags).script(optimizer)


@pytest.mark.parametrize("method,base_dtype", [("median", "F32"), ("clipped", "F32"),
                                               ("weighted", "BF16")])
def test_nesterov_over_other_methods_and_a_bf16_base(make_server, tmp_path, method,
                                                     base_dtype):
    flags, options = PLAIN_METHODS[method]
    run = Run(make_server, tmp_path, method, flags + ["--outer_optimizer=nesterov"],
              base_dtype=base_dtype, **options)
    run.script(ref.Optimizer("nesterov", lr=0.7, momentum=0.9))


MERGES = {
    "task_arithmetic": (["--fusion=task_arithmetic", "--merge_scale=0.4"],
                        {"merge_scale": 0.4}),
    "ties": (["--fusion=ties", "--ties_density=0.2"], {"ties_density": 0.2}),
    "dare": (["--fusion=dare", "--dare_drop_rate=0.3", "--dare_seed=7", "--merge_scale=0.5"],
             {"dare_drop_rate": 0.3, "dare_seed": 7, "merge_scale": 0.5}),
}


@pytest.mark.parametrize("outer", ["plain", "nesterov"])
@pytest.mark.parametrize("method", sorted(MERGES))
def test_a_merging_method_follows_the_rules(make_server, tmp_path, method, outer):
    flags, options = MERGES[method]
    optimizer = (ref.Optimizer("plain") if outer == "plain"
                 else ref.Optimizer("nesterov", lr=0.7, momentum=0.9))
    run = Run(make_server, tmp_path, method, flags + [f"--outer_optimizer={outer}"], **options)
    run.script(optimizer)


@pytest.mark.parametrize("method,outer", [("mean", "plain"), ("median", "plain"),
                                          ("mean", "nesterov")])
def test_8bit_deltas_fuse_as_their_decoded_values(make_server, tmp_path, method, outer):
    """The script's deltas (a stale one included) sent as DELTA_INT8 with blocks of 32 and
    100 values (a partial last block): every base is the rules' over q·s."""
    flags, options = PLAIN_METHODS[method]
    optimizer = None if outer == "plain" else ref.Optimizer("nesterov", lr=0.7, momentum=0.9)
    run = Run(make_server, tmp_path, method, flags + [f"--outer_optimizer={outer}"], int8=True,
              **options)
    run.script(optimizer)
