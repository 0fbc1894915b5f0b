"""The Python client against a real coldfused (TLS, tokens) on loopback: round trips bit
for bit, resuming without resending, every error with the server's code, and the same
stored bytes as `coldfusectl push`."""
from __future__ import annotations

import hashlib
import os
import threading
import time

import grpc
import numpy as np
import pytest

from coldfuse import Client, Error, load_safetensors
from coldfuse import _codec
from coldfuse.v1 import tensor_pb2

RNG = np.random.default_rng(7)


def make_checkpoint(path, dtype, shapes):
    """A safetensors file of random tensors of `dtype` ("F32", "F16", "BF16")."""
    code = _codec.BY_NAME[dtype]
    tensors = {}
    for name, shape in shapes.items():
        v = RNG.standard_normal(shape).astype(np.float32)
        tensors[name] = (code, _codec.encode(v, code).reshape(shape))
    _codec.write_safetensors(str(path), tensors)
    return tensors


SHAPES = {"enc.0.weight": (64, 48), "enc.0.bias": (64,), "enc.1.weight": (3, 64),
          "empty": (0, 4)}


def raw_bytes(tensors, names):
    return b"".join(np.ascontiguousarray(tensors[n]).tobytes() for n in names)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_pull_and_push_round_trip_bit_for_bit(make_server, tmp_path, dtype):
    server = make_server("--min_contributions=1", "--round_timeout_s=0")
    base = make_checkpoint(tmp_path / "base.safetensors", dtype, SHAPES)
    server.ctl("init", f"--from={tmp_path / 'base.safetensors'}")
    with server.client("alice") as c:
        pulled = c.pull(str(tmp_path / "v0.safetensors"))
        assert pulled.version == 0
        got = _codec.SafetensorsFile(pulled.path)
        names = [t.name for t in pulled.manifest.tensors]
        assert sorted(names) == sorted(SHAPES)  # in the order init --from chose
        for n in names:
            assert got.entries[n].dtype == _codec.BY_NAME[dtype]
            np.testing.assert_array_equal(got.raw(n), base[n][1])
        assert pulled.sha256 == hashlib.sha256(
            raw_bytes({k: v[1] for k, v in base.items()}, names)).digest()
        assert got.metadata["coldfuse.sha256"] == pulled.sha256.hex()
        # The file loads in the reference implementation.
        safetensors_numpy = pytest.importorskip("safetensors.numpy")
        if dtype != "BF16":  # numpy has no bfloat16
            ref = safetensors_numpy.load_file(pulled.path)
            np.testing.assert_array_equal(ref["enc.0.weight"], base["enc.0.weight"][1])

        # As torch tensors, in the base's dtype; changed and pushed back.
        torch = pytest.importorskip("torch")
        tensors, version = c.pull_tensors()
        assert version == 0
        want = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
        assert tensors["enc.0.weight"].dtype == want
        tuned = {n: (t.float() * 0.5 + 0.25).to(want) for n, t in tensors.items()}
        r = c.push(tuned, num_examples=100, task="t", metrics={"accuracy_after": 0.9})
        assert r.round == 1 and r.trained_from_base == 0
        sent = {n: _codec.encode(t.float().numpy(), _codec.BY_NAME[dtype])
                if dtype != "BF16" else t.view(torch.int16).numpy().view("<u2")
                for n, t in tuned.items()}
        assert r.sha256 == hashlib.sha256(raw_bytes(sent, names)).digest()
        info = server.client("vera").round(1)
        assert info.contributions[0].contributor == "alice"
        assert info.contributions[0].metrics["accuracy_after"] == pytest.approx(0.9)
        # One contribution fused: the new base is those values, bit for bit.
        c.wait_for_base(1, timeout=60)
        fused, version = c.pull_tensors(framework="numpy")
        assert version == 1
        for n in names:
            expect = sent[n] if dtype != "BF16" else _codec.bf16_bits_to_f32(sent[n])
            np.testing.assert_array_equal(fused[n].reshape(-1), expect.reshape(-1))


def test_a_push_from_python_stores_what_coldfusectl_push_stores(make_server, tmp_path):
    # Each round closes with bob's push (coldfusectl) and alice's (this client), both
    # declaring base v0 as where they were fine-tuned from.
    server = make_server("--min_contributions=2", "--round_timeout_s=0", "--max_staleness=8")
    make_checkpoint(tmp_path / "base.safetensors", "F32", SHAPES)
    server.ctl("init", f"--from={tmp_path / 'base.safetensors'}")
    viewer = server.client("vera")
    with server.client("alice") as c:
        for flags, kw in ((["--encoding=full"], {}),
                          (["--send_dtype=bf16"], {"send_dtype": "bf16"}),
                          (["--encoding=delta", "--send_dtype=f16"],
                           {"encoding": "delta", "send_dtype": "f16"}),
                          (["--encoding=delta_int8", "--int8_block_size=32"],
                           {"encoding": "delta_int8", "int8_block_size": 32})):
            for as_dict in (False, True):
                # Other weights each time: the server refuses the same upload twice.
                path = str(tmp_path / f"tuned-{len(flags)}-{flags[-1]}-{as_dict}.safetensors")
                tuned = make_checkpoint(path, "F32", SHAPES)
                source = {n: v[1] for n, v in tuned.items()} if as_dict else path
                server.ctl("push", f"--checkpoint={path}", "--num_examples=10", "--version=0",
                           *flags, token="bob")
                mine = c.push(source, num_examples=10, from_base=0, **kw)
                contributions = viewer.round(mine.round).contributions
                by_ctl = [x for x in contributions if x.contributor == "bob"][0]
                by_py = [x for x in contributions if x.contributor == "alice"][0]
                what = f"{flags} from {'a dict' if as_dict else 'a file'}"
                assert by_py.sha256 == by_ctl.sha256 == mine.sha256, what
                assert by_py.encoding == by_ctl.encoding, what
                assert [t.dtype for t in by_py.manifest.tensors] == \
                    [t.dtype for t in by_ctl.manifest.tensors], what
                assert by_py.trained_from_base == by_ctl.trained_from_base == 0, what
                assert by_py.int8_block_size == by_ctl.int8_block_size, what
    viewer.close()


def big_base(tmp_path, server, megabytes=24):
    n = megabytes * (1 << 20) // 4 // 1024
    shapes = {"a": (n // 2, 1024), "b": (n - n // 2, 1024)}
    make_checkpoint(tmp_path / "big.safetensors", "F32", shapes)
    server.ctl("init", f"--from={tmp_path / 'big.safetensors'}")
    return shapes


def test_a_push_cut_off_resumes_without_resending(make_server, tmp_path):
    from conftest import CuttingProxy
    from coldfuse import Client
    server = make_server("--min_contributions=1", "--round_timeout_s=0")
    shapes = big_base(tmp_path, server)
    total = sum(int(np.prod(s)) * 4 for s in shapes.values())
    tuned = {n: RNG.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    # The connection breaks after about 10 MB of the 24 MB upload went through.
    proxy = CuttingProxy(server.port, 10 << 20)
    with Client(proxy.address, ca=server.ca, token_file=server.token("alice"),
                server_name="127.0.0.1") as c:
        r = c.push(tuned, num_examples=5)
    proxy.close()
    assert proxy.cut.is_set()
    assert r.attempts == 2
    assert len(r.resumed_at) == 1 and r.resumed_at[0] > 0
    # The second attempt sent exactly what the server had not stored.
    assert r.attempt_bytes[1] == total - r.resumed_at[0]
    assert r.bytes_on_wire < total + (11 << 20)
    with server.client("vera") as v:
        v.wait_for_base(1, timeout=60)
        info = v.round(1)
    assert info.contributions[0].sha256 == hashlib.sha256(
        raw_bytes(tuned, [t.name for t in info.contributions[0].manifest.tensors])).digest()


def test_an_upload_another_process_began_is_resumed_by_its_upload_id(make_server, tmp_path):
    from conftest import CuttingProxy
    from coldfuse import Client, new_upload_id
    server = make_server("--min_contributions=1", "--round_timeout_s=0")
    shapes = big_base(tmp_path, server)
    total = sum(int(np.prod(s)) * 4 for s in shapes.values())
    tuned = {n: RNG.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    uid = new_upload_id()  # kept by the caller, e.g. next to its checkpoint
    proxy = CuttingProxy(server.port, 10 << 20, refuse_after_cut=True)
    with Client(proxy.address, ca=server.ca, token_file=server.token("alice"),
                server_name="127.0.0.1", retry_for=1.0) as c:
        with pytest.raises(Error) as e:
            c.push(tuned, num_examples=5, upload_id=uid, metrics={"loss": 0.5})
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    proxy.close()
    # A new process (a new client), the same arguments and upload id.
    with server.client("alice") as c:
        r = c.push(tuned, num_examples=5, upload_id=uid, metrics={"loss": 0.5})
    assert r.attempts == 1 and len(r.resumed_at) == 1 and r.resumed_at[0] > 0
    assert r.attempt_bytes[0] == total - r.resumed_at[0]
    assert r.round == 1


def test_a_pull_cut_by_a_server_crash_resumes_in_the_same_call_and_in_another(
        make_server, tmp_path):
    server = make_server("--min_contributions=1", "--round_timeout_s=0")
    shapes = big_base(tmp_path, server)
    total = sum(int(np.prod(s)) * 4 for s in shapes.values())
    killed = threading.Event()

    def progress(done, _total):
        if done >= 9 << 20 and not killed.is_set():
            killed.set()
            server.kill()
            threading.Timer(1.0, server.start).start()

    with server.client("alice") as c:
        pulled = c.pull(str(tmp_path / "v0.safetensors"), progress=progress)
    assert killed.is_set() and pulled.attempts >= 2
    assert pulled.bytes_on_wire < total + (9 << 20)  # not the whole base twice
    assert _codec.SafetensorsFile(pulled.path).raw("a").shape == shapes["a"]

    # A process that gives up (the server stays down) leaves a .part the next call
    # continues from.
    killed.clear()

    def stop_for_good(done, _total):
        if done >= 9 << 20 and not killed.is_set():
            killed.set()
            server.kill()

    out = str(tmp_path / "again.safetensors")
    with server.client("alice", retry_for=1.0) as c:
        with pytest.raises(Error) as e:
            c.pull(out, progress=stop_for_good)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert os.path.exists(out + ".part") and not os.path.exists(out)
    server.start()
    with server.client("alice") as c:
        again = c.pull(out)
    assert again.bytes_on_wire <= total - (8 << 20)
    assert again.sha256 == pulled.sha256
    with open(out, "rb") as a, open(pulled.path, "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(out + ".part")


def test_every_error_carries_the_servers_code_and_message(make_server, tmp_path):
    server = make_server("--min_contributions=1", "--round_timeout_s=0", "--max_staleness=1")
    make_checkpoint(tmp_path / "base.safetensors", "F32", SHAPES)
    server.ctl("init", f"--from={tmp_path / 'base.safetensors'}")
    tuned = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}

    def code_of(fn):
        with pytest.raises(Error) as e:
            fn()
        assert e.value.message, "an error must say what is wrong"
        return e.value.code, e.value.message

    bad = tmp_path / "bad.token"
    bad.write_text("cf_" + "0" * 64)
    from coldfuse import Client
    with Client(server.address, ca=server.ca, token_file=str(bad)) as c:
        code, msg = code_of(c.status)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with server.client("vera") as c:  # a viewer may not contribute
        code, msg = code_of(lambda: c.push(tuned, num_examples=1))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    with server.client("alice") as c:
        code, msg = code_of(lambda: c.open_round("bob"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "alice" in msg and "bob" in msg
        code, msg = code_of(lambda: c.pull(str(tmp_path / "x"), version=99))
        assert code == grpc.StatusCode.NOT_FOUND
        code, msg = code_of(lambda: c.push({"enc.0.weight": tuned["enc.0.weight"]},
                                           num_examples=1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "enc.1.weight" in msg
        wrong = dict(tuned, **{"enc.0.bias": np.zeros(3, np.float32)})
        code, msg = code_of(lambda: c.push(wrong, num_examples=1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "enc.0.bias" in msg
        nan = dict(tuned, **{"enc.0.bias": np.full(64, np.nan, np.float32)})
        code, msg = code_of(lambda: c.push(nan, num_examples=1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # Two fusions later, base v0 is beyond --max_staleness=1.
        def shifted(x):  # other weights each time: the same upload twice is refused
            return {n: np.full(sh, x, np.float32) for n, sh in SHAPES.items()}
        for v in (1, 2):
            c.push(shifted(0.01 * v), num_examples=1)
            c.wait_for_base(v, timeout=60)
        code, msg = code_of(lambda: c.push(shifted(0.03), num_examples=1, from_base=0))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "--max_staleness=1" in msg
        r = c.push(shifted(0.04), num_examples=1, from_base=1)  # one fusion old: stale
        assert r.trained_from_base == 1
        assert server.client("vera").round(r.round).contributions[0].staleness == 1
    other = tmp_path / "other-ca"
    os.makedirs(other)
    import subprocess
    subprocess.run(["bash", os.path.join(os.path.dirname(__file__), "..", "..", "deploy",
                                         "make-certs.sh"), str(other)], check=True,
                   capture_output=True)
    with Client(server.address, ca=str(other / "ca.crt"), token_file=server.token("alice"),
                timeout=5) as c:
        code, msg = code_of(c.status)
        assert code == grpc.StatusCode.UNAVAILABLE


def test_status_rounds_watch_and_wait(make_server, tmp_path):
    server = make_server("--min_contributions=1", "--round_timeout_s=0")
    make_checkpoint(tmp_path / "base.safetensors", "F32", SHAPES)
    server.ctl("init", f"--from={tmp_path / 'base.safetensors'}")
    with server.client("vera") as v, server.client("alice") as a:
        s = v.status()
        assert s.initialized and s.base_version == 0 and s.open_round.number == 1
        r = a.open_round("alice")
        assert r.identity == "alice" and r.base_version == 0
        assert sorted(t.name for t in r.manifest.tensors) == sorted(SHAPES)
        seen = []

        def later():
            time.sleep(0.5)
            a.push({n: np.ones(sh, np.float32) for n, sh in SHAPES.items()}, num_examples=3)
        threading.Thread(target=later).start()
        for st in v.watch(timeout=60):
            seen.append(st.change_seq)
            if st.base_version == 1:
                break
        assert seen == sorted(seen) and len(seen) >= 2
        assert v.wait_for_base(1, timeout=5) == 1
        assert a.wait_for_base(1, timeout=5) == 1  # a contributor's token: by GetRound
        with pytest.raises(Error) as e:
            v.wait_for_base(5, timeout=1)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [x.number for x in v.rounds()] == [1, 2]
        ev = server.client("eve").record_evaluation(1, "unseen-task", "accuracy", 0.75, 100)
        assert ev.evaluator == "eve"
        assert v.evaluations("unseen-task")[0].value == pytest.approx(0.75)


def test_mutual_tls_needs_the_client_certificate(make_server, tmp_path):
    server = make_server("--tls_client_ca={certs}/ca.crt", "--min_contributions=1")
    make_checkpoint(tmp_path / "base.safetensors", "F32", SHAPES)
    server.ctl("init", f"--from={tmp_path / 'base.safetensors'}")
    from coldfuse import Client
    with Client(server.address, ca=server.ca, token_file=server.token("alice"),
                timeout=5, retry_for=1) as c:
        with pytest.raises(Error) as e:
            c.open_round()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    with Client(server.address, ca=server.ca, token_file=server.token("alice"),
                cert=f"{server.certs}/alice.crt", key=f"{server.certs}/alice.key") as c:
        assert c.open_round("alice").identity == "alice"
        assert c.pull(str(tmp_path / "v0.safetensors")).version == 0
    with pytest.raises(ValueError):
        Client(server.address, ca=server.ca, cert=f"{server.certs}/alice.crt")
