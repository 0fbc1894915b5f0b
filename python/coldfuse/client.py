"""The coldfuse client: status, rounds, pulling bases and pushing contributions over the
documented gRPC protocol (docs/protocol.md), with TLS and tokens like coldfusectl.

Every call raises coldfuse.Error (with the gRPC code and the server's message) when it
fails. Transfers stream in 1 MiB chunks, are verified by SHA-256, and resume where they
stopped after a broken connection or a server restart (within `retry_for` seconds).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import string
import tempfile
import time
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import grpc
import numpy as np

from coldfuse import _codec
from coldfuse.errors import Error, wrap
from coldfuse.v1 import coldfuse_pb2, coldfuse_pb2_grpc, tensor_pb2

CHUNK = 1 << 20  # bytes per chunk, the protocol's maximum
SIDECAR_EVERY = 256 << 20  # a pull records how far it got this often (bytes)
# Codes after which a transfer resumes: the server down or restarting, a broken stream.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED)
UPLOAD_ID_CHARS = string.ascii_letters + string.digits

# progress(done_bytes, total_bytes): called as a transfer moves on.
Progress = Callable[[int, int], None]
TensorLike = Any  # numpy.ndarray or torch.Tensor


@dataclass
class PulledBase:
    """A base written to `path` (a safetensors file) and verified."""
    version: int
    path: str
    sha256: bytes
    model_spec: str
    manifest: tensor_pb2.Manifest
    bytes_on_wire: int = 0  # this call's chunk bytes (less than the base when resumed)
    attempts: int = 1


@dataclass
class PushResult:
    """What the server acknowledged, and what this call sent."""
    contribution_id: int
    round: int
    sha256: bytes
    bytes: int
    bytes_on_wire: int = 0
    attempts: int = 1
    upload_id: str = ""
    trained_from_base: int = 0
    # Per attempt: the chunk bytes sent; per resume: the bytes the server had stored.
    attempt_bytes: List[int] = field(default_factory=list)
    resumed_at: List[int] = field(default_factory=list)
    receipt: Optional[coldfuse_pb2.ContributionReceipt] = field(default=None, repr=False)


def new_upload_id() -> str:
    return "py" + "".join(secrets.choice(UPLOAD_ID_CHARS) for _ in range(22))


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class Client:
    """A connection to a coldfused.

    server: "host:port". TLS: `ca` (the PEM CA that signed the server's certificate),
    optionally `cert`/`key` for a mutual-TLS server and `server_name` when the address is
    not a name the certificate carries. `token` or `token_file` (default: the
    COLDFUSE_TOKEN environment variable) authenticates the caller. `insecure=True` talks
    plaintext to a server run --insecure (tests only). `timeout` bounds each unary call;
    `retry_for` is how long transfers and waits keep retrying an unreachable server.
    """

    def __init__(self, server: str, *, ca: Optional[str] = None, cert: Optional[str] = None,
                 key: Optional[str] = None, token: Optional[str] = None,
                 token_file: Optional[str] = None, server_name: Optional[str] = None,
                 insecure: bool = False, timeout: float = 30.0, retry_for: float = 120.0):
        if token is None and token_file:
            with open(token_file) as f:
                token = f.read().strip()
        if token is None:
            token = os.environ.get("COLDFUSE_TOKEN") or None
        options = [("grpc.max_receive_message_length", 8 << 20),
                   ("grpc.max_send_message_length", 8 << 20)]
        if ca:
            if bool(cert) != bool(key):
                raise ValueError("give both cert and key (mutual TLS), or neither")
            creds = grpc.ssl_channel_credentials(root_certificates=_read(ca),
                                                 private_key=_read(key),
                                                 certificate_chain=_read(cert))
            if token:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(token))
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(server, creds, options)
        elif insecure:
            self._channel = grpc.insecure_channel(server, options)
        else:
            raise ValueError("give ca= (the server's CA certificate) for TLS, or insecure=True "
                             "for a server run --insecure")
        self.server = server
        self.timeout = timeout
        self.retry_for = retry_for
        self._contributor = coldfuse_pb2_grpc.ContributorStub(self._channel)
        self._status = coldfuse_pb2_grpc.StatusStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable, request: Any) -> Any:
        try:
            return fn(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise wrap(e, what) from None

    # -------------------------------------------------------------------- status

    def status(self) -> coldfuse_pb2.ServerStatus:
        return self._call("GetStatus", self._status.GetStatus, coldfuse_pb2.GetStatusRequest())

    def rounds(self) -> List[coldfuse_pb2.RoundInfo]:
        return list(self._call("ListRounds", self._status.ListRounds,
                               coldfuse_pb2.ListRoundsRequest()).rounds)

    def round(self, number: int) -> coldfuse_pb2.RoundInfo:
        return self._call("GetRound", self._status.GetRound,
                          coldfuse_pb2.GetRoundInfoRequest(number=number))

    def evaluations(self, task: str = "") -> List[coldfuse_pb2.Evaluation]:
        return list(self._call("ListEvaluations", self._status.ListEvaluations,
                               coldfuse_pb2.ListEvaluationsRequest(task=task)).evaluations)

    def open_round(self, name: str = "") -> coldfuse_pb2.GetRoundResponse:
        """The open round as a contributor sees it (Contributor.GetRound): its number, base
        version, manifest, progress, deadline and staleness policy. `name`, if given, must
        be the token's name (PERMISSION_DENIED naming both otherwise)."""
        return self._call("GetRound", self._contributor.GetRound,
                          coldfuse_pb2.GetRoundRequest(contributor=name))

    def watch(self, timeout: Optional[float] = None) -> Iterator[coldfuse_pb2.ServerStatus]:
        """The server's status now and after every change, for `timeout` seconds (None:
        until the caller stops iterating)."""
        call = self._status.WatchStatus(coldfuse_pb2.WatchStatusRequest(), timeout=timeout)
        try:
            for s in call:
                yield s
        except grpc.RpcError as e:
            if timeout is not None and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise wrap(e, "WatchStatus") from None
        finally:
            call.cancel()

    def wait_for_base(self, version: int, timeout: float = 600.0) -> int:
        """Blocks until the server's base is at least `version` and returns the base
        version; rides out a server that is not up yet or restarts. With a viewer or
        evaluator token it watches the status stream; with a contributor's (which may not
        read Status) it asks for the open round every second. Raises
        Error(DEADLINE_EXCEEDED) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Optional[Error] = None
        watch = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if watch:
                    for s in self.watch(timeout=left):
                        if s.initialized and s.base_version >= version:
                            return s.base_version
                else:
                    r = self.open_round()
                    if r.base_version >= version:
                        return r.base_version
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            except Error as e:
                if watch and e.code == grpc.StatusCode.PERMISSION_DENIED:
                    watch = False
                    continue
                if e.code not in RETRYABLE + (grpc.StatusCode.FAILED_PRECONDITION,):
                    raise
                last = e
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        raise Error(grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"base v{version} did not appear within {timeout:g} s" +
                    (f" (last problem: {last.message})" if last else ""))

    def wait_for_round(self, number: int, timeout: float = 600.0) -> coldfuse_pb2.GetRoundResponse:
        """Blocks until round `number` has closed (a later round is open) and returns the
        open round; rides out restarts. Any token that may call GetRound (contributor,
        evaluator). Raises Error(DEADLINE_EXCEEDED) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Optional[Error] = None
        while time.monotonic() < deadline:
            try:
                r = self.open_round()
                if r.round > number:
                    return r
            except Error as e:
                if e.code not in RETRYABLE + (grpc.StatusCode.FAILED_PRECONDITION,):
                    raise
                last = e
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        raise Error(grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"round {number} did not close within {timeout:g} s" +
                    (f" (last problem: {last.message})" if last else ""))

    def record_evaluation(self, base_version: int, task: str, metric: str, value: float,
                          num_train_examples: int = 0,
                          num_eval_examples: int = 0) -> coldfuse_pb2.Evaluation:
        """Records a score of base `base_version` on `task` (an evaluator's or contributor's
        token): num_train_examples is the few-shot k it was fine-tuned on (0: none)."""
        e = coldfuse_pb2.Evaluation(base_version=base_version, task=task, metric=metric,
                                    value=value, num_train_examples=num_train_examples,
                                    num_eval_examples=num_eval_examples)
        return self._call("RecordEvaluation", self._contributor.RecordEvaluation,
                          coldfuse_pb2.RecordEvaluationRequest(evaluation=e))

    # -------------------------------------------------------------------- pull

    def pull(self, path: str, version: Optional[int] = None, *,
             progress: Optional[Progress] = None) -> PulledBase:
        """Downloads base `version` (None: the current one) into the safetensors file
        `path`, streaming (it is never held in memory), verifying its SHA-256, and
        resuming after a broken connection or server restart. A pull cut short by a crash
        leaves `path + ".part"`; calling pull again with the same path continues it."""
        part = path + ".part"
        state = _PullState.load(part) if os.path.exists(part) else None
        if state is not None and version is None:
            version_now = self.open_round().base_version  # the current base may be newer
            if version_now != state.version:
                state = None
        if state is not None and version is not None and state.version != version:
            state = None
        started = time.monotonic()
        attempts = 0
        on_wire = 0
        while True:
            attempts += 1
            try:
                result = self._pull_once(path, part, version, state, progress)
                result.attempts = attempts
                result.bytes_on_wire = on_wire + result.bytes_on_wire
                return result
            except _Interrupted as e:
                state = e.state
                on_wire += e.bytes_on_wire
                if e.error.code not in RETRYABLE or \
                        time.monotonic() - started > self.retry_for:
                    raise e.error from None
                time.sleep(min(2.0, 0.2 * attempts) * (0.5 + random.random()))

    def _pull_once(self, path: str, part: str, version: Optional[int],
                   state: Optional["_PullState"], progress: Optional[Progress]) -> PulledBase:
        request = coldfuse_pb2.PullBaseRequest()
        if state is not None:
            request.base_version = state.version
            request.start_tensor = state.tensor
            request.start_offset = state.offset
        elif version is not None:
            request.base_version = version
        call = self._contributor.PullBase(request, timeout=None)
        on_wire = 0
        f = None
        try:
            for msg in call:
                kind = msg.WhichOneof("part")
                if kind == "header":
                    h = msg.header
                    if state is not None and (h.base_version != state.version or
                                              h.manifest.SerializeToString() !=
                                              state.manifest.SerializeToString()):
                        raise Error(grpc.StatusCode.DATA_LOSS,
                                    f"the server's base v{h.base_version} differs from the "
                                    f"one {part} began to hold")
                    if state is None:
                        state = _PullState.begin(part, h)
                    f = open(part, "r+b")
                elif kind == "chunk":
                    if f is None or state is None:
                        raise Error(grpc.StatusCode.INTERNAL, "PullBase sent a chunk first")
                    c = msg.chunk
                    state.write(f, c.tensor_index, c.offset, c.data)
                    on_wire += len(c.data)
                    if progress:
                        progress(state.done, state.total)
                elif kind == "trailer":
                    if f is None or state is None:
                        raise Error(grpc.StatusCode.INTERNAL, "PullBase sent no header")
                    return state.finish(f, path, msg.trailer, on_wire)
            raise Error(grpc.StatusCode.UNAVAILABLE, "PullBase ended before its trailer")
        except grpc.RpcError as e:
            if state is not None and f is not None:
                state.save(f)
            raise _Interrupted(wrap(e, "PullBase"), state, on_wire) from None
        except Error as e:
            if e.code in RETRYABLE and state is not None and f is not None:
                state.save(f)
                raise _Interrupted(e, state, on_wire) from None
            raise
        finally:
            if f is not None:
                f.close()
            call.cancel()

    def pull_tensors(self, version: Optional[int] = None, *, framework: str = "torch",
                     progress: Optional[Progress] = None) -> Tuple[Dict[str, TensorLike], int]:
        """Base `version` as {name: tensor} and its version. framework="torch" gives
        torch tensors in the base's dtypes; "numpy" gives numpy arrays (BF16 as float32,
        numpy having no bfloat16). The base is streamed to a temporary file and the
        tensors are views of its memory map (copy-on-write), so a large base is never held
        twice in memory."""
        fd, tmp = tempfile.mkstemp(prefix="coldfuse-base-", suffix=".safetensors")
        os.close(fd)
        try:
            pulled = self.pull(tmp, version, progress=progress)
            return load_safetensors(tmp, framework=framework), pulled.version
        finally:
            for p in (tmp, tmp + ".part"):
                if os.path.exists(p):
                    os.unlink(p)  # the map keeps the data alive until the tensors go

    # -------------------------------------------------------------------- push

    def push(self, tensors: Union[str, Mapping[str, TensorLike]], *, num_examples: int,
             task: str = "", metrics: Optional[Mapping[str, float]] = None,
             from_base: Optional[int] = None, encoding: str = "full",
             send_dtype: Optional[str] = None, name: str = "", upload_id: Optional[str] = None,
             progress: Optional[Progress] = None, int8_block_size: int = 64) -> PushResult:
        """Contributes fine-tuned shared tensors to the open round.

        tensors: {name: numpy array or torch tensor} (e.g. a model's state_dict), a
        safetensors file, or a folder with model.safetensors (or a sharded index). Names
        and shapes must be the base's (extra names are ignored, missing ones are an error
        listing them). from_base: the base version it was fine-tuned from (default: the
        current one; an older one is fused as a stale contribution). encoding: "full",
        "delta" (minus that base, pulled for the purpose) or "delta_int8" (that delta in 8
        bits, one float32 scale per `int8_block_size` values: about a quarter of F32).
        send_dtype: f32, f16, bf16 or f64 (default: each tensor's own; not with
        delta_int8). The upload resumes after a broken connection or a
        server restart; pass the same `upload_id` to resume one a crashed process began.
        """
        if encoding not in ("full", "delta", "delta_int8"):
            raise ValueError("encoding must be 'full', 'delta' or 'delta_int8'")
        if encoding == "delta_int8" and send_dtype:
            raise ValueError("send_dtype does not apply to delta_int8 (its values are 8-bit)")
        if encoding == "delta_int8" and not 8 <= int8_block_size <= 65536:
            raise ValueError("int8_block_size must be 8 to 65536 (64 is a good default)")
        if num_examples <= 0:
            raise ValueError("num_examples must be > 0: how many examples trained it")
        forced = _codec.parse_dtype(send_dtype) if send_dtype else None
        source = _Source.open(tensors)
        round_info = self.open_round(name)
        base_version = round_info.base_version if from_base is None else from_base
        base_file: Optional[_codec.SafetensorsFile] = None
        base_tmp = None
        try:
            # Names and shapes first: a mismatch is said before a base is pulled for a delta.
            plan = source.plan(round_info.manifest, forced, None)
            if encoding in ("delta", "delta_int8"):
                fd, base_tmp = tempfile.mkstemp(prefix="coldfuse-base-", suffix=".safetensors")
                os.close(fd)
                self.pull(base_tmp, base_version)
                base_file = _codec.SafetensorsFile(base_tmp)
            header = coldfuse_pb2.ContributionHeader(
                round=round_info.round, base_version=base_version, contributor=name, task=task,
                num_examples=num_examples, upload_id=upload_id or new_upload_id(),
                encoding={"full": coldfuse_pb2.FULL, "delta": coldfuse_pb2.DELTA,
                          "delta_int8": coldfuse_pb2.DELTA_INT8}[encoding])
            if encoding == "delta_int8":
                header.int8_block_size = int8_block_size
            for k, v in (metrics or {}).items():
                header.metrics[k] = float(v)
            if base_file is not None:
                plan = source.plan(round_info.manifest, forced, base_file,
                                   int8_block_size if encoding == "delta_int8" else 0)
            for spec in plan.specs:
                header.manifest.tensors.append(spec)
            resume = None
            if upload_id:  # perhaps begun by another process: continue what the server kept
                kept = self._upload_progress(header)
                if kept is not None:
                    header.round = kept.round  # the header must be the interrupted one's
                    resume = (kept.tensor_index, kept.offset, kept.bytes_stored)
            return self._push_resumably(header, plan, progress, resume)
        finally:
            if base_tmp and os.path.exists(base_tmp):
                os.unlink(base_tmp)

    def _upload_progress(self, header: coldfuse_pb2.ContributionHeader,
                         started: Optional[float] = None
                         ) -> Optional[coldfuse_pb2.UploadProgress]:
        """What the server kept of upload header.upload_id once no stream is attached to it
        (None: nothing, start over). Retries while the server is unreachable or still
        attached to the broken stream, within retry_for of `started`."""
        started = time.monotonic() if started is None else started
        tries = 0
        while True:
            try:
                up = self._contributor.GetUpload(
                    coldfuse_pb2.GetUploadRequest(upload_id=header.upload_id,
                                                  contributor=header.contributor),
                    timeout=self.timeout)
                if not up.attached:
                    return up
                err = Error(grpc.StatusCode.ABORTED,
                            f"upload {header.upload_id} is still attached to a stream")
            except grpc.RpcError as e:
                err = wrap(e, "GetUpload")
                if err.code == grpc.StatusCode.NOT_FOUND:
                    return None
                if err.code not in RETRYABLE:
                    raise err from None
            if time.monotonic() - started > self.retry_for:
                raise err
            tries += 1
            time.sleep(min(2.0, 0.2 * tries) * (0.5 + random.random()))

    def _push_resumably(self, header: coldfuse_pb2.ContributionHeader, plan: "_Plan",
                        progress: Optional[Progress],
                        kept: Optional[Tuple[int, int, int]] = None) -> PushResult:
        started = time.monotonic()
        attempts = 0
        on_wire = 0
        resume: Optional[Tuple[int, int]] = None
        attempt_bytes: List[int] = []
        resumed_at: List[int] = []
        if kept is not None:
            resume = (kept[0], kept[1])
            resumed_at.append(kept[2])
        while True:
            attempts += 1
            sent = [0]
            failed: List[BaseException] = []  # what went wrong making the chunks, if anything
            try:
                receipt = self._push_once(header, plan, resume, sent, progress, failed)
                attempt_bytes.append(sent[0])
                return PushResult(receipt.contribution_id, receipt.round, receipt.sha256,
                                  receipt.bytes, on_wire + sent[0], attempts, header.upload_id,
                                  header.base_version, attempt_bytes, resumed_at, receipt)
            except grpc.RpcError as e:
                if failed:  # our own error, not the connection's: say it as it is
                    raise failed[0] from None
                on_wire += sent[0]
                attempt_bytes.append(sent[0])
                err = wrap(e, "PushContribution")
                if err.code not in RETRYABLE or time.monotonic() - started > self.retry_for:
                    raise err from None
            # Where the server stopped storing: ask until it has noticed the broken stream.
            time.sleep(min(2.0, 0.2 * attempts) * (0.5 + random.random()))
            up = self._upload_progress(header, started)
            resume = None if up is None else (up.tensor_index, up.offset)
            if up is not None:
                resumed_at.append(up.bytes_stored)

    def _push_once(self, header: coldfuse_pb2.ContributionHeader, plan: "_Plan",
                   resume: Optional[Tuple[int, int]], sent: List[int],
                   progress: Optional[Progress],
                   failed: List[BaseException]) -> coldfuse_pb2.ContributionReceipt:
        h = coldfuse_pb2.ContributionHeader()
        h.CopyFrom(header)
        if resume is not None:
            h.resume_tensor, h.resume_offset = resume

        def requests() -> Iterator[coldfuse_pb2.PushContributionRequest]:
            try:
                yield from chunks()
            except BaseException as e:  # noqa: BLE001  (re-raised by the caller)
                failed.append(e)
                raise

        def chunks() -> Iterator[coldfuse_pb2.PushContributionRequest]:
            yield coldfuse_pb2.PushContributionRequest(header=h)
            sha = hashlib.sha256()
            total = plan.total
            done = 0
            for index in range(len(plan.specs)):
                data = plan.bytes_of(index)
                skip = 0
                if resume is not None:
                    if index < resume[0]:
                        skip = len(data)
                    elif index == resume[0]:
                        skip = resume[1]
                for off in range(0, len(data), CHUNK):
                    piece = data[off:off + CHUNK]
                    sha.update(piece)
                    done += len(piece)
                    if off + len(piece) <= skip:
                        continue
                    if off < skip:  # resume mid-chunk
                        piece = piece[skip - off:]
                        off = skip
                    sent[0] += len(piece)
                    yield coldfuse_pb2.PushContributionRequest(
                        chunk=tensor_pb2.TensorChunk(tensor_index=index, offset=off,
                                                     data=bytes(piece)))
                    if progress:
                        progress(done, total)
            yield coldfuse_pb2.PushContributionRequest(
                trailer=tensor_pb2.StreamTrailer(sha256=sha.digest(), total_bytes=total))

        return self._contributor.PushContribution(requests(), timeout=None)


# ------------------------------------------------------------------------ pull state

class _Interrupted(Exception):
    def __init__(self, error: Error, state: Optional["_PullState"], bytes_on_wire: int):
        super().__init__(error.message)
        self.error = error
        self.state = state
        self.bytes_on_wire = bytes_on_wire


class _PullState:
    """A download being written into `part`: its layout, how far it got (every tensor
    before `tensor` and `offset` bytes of it), and the hash of those bytes. Saved next to
    the file as `part.json` so another process can continue it."""

    def __init__(self, part: str, version: int, model_spec: str, manifest: tensor_pb2.Manifest,
                 data_start: int):
        self.part = part
        self.version = version
        self.model_spec = model_spec
        self.manifest = manifest
        self.data_start = data_start
        self.sizes = [_codec.byte_length(t) for t in manifest.tensors]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.total = sum(self.sizes)
        self.tensor = 0
        self.offset = 0
        self.done = 0
        self.sha = hashlib.sha256()

    @classmethod
    def begin(cls, part: str, h: coldfuse_pb2.BaseHeader) -> "_PullState":
        for t in h.manifest.tensors:
            if t.dtype not in _codec.DTYPES:
                raise Error(grpc.StatusCode.INTERNAL, f"tensor {t.name!r} has an unknown dtype")
        with open(part, "wb") as f:
            # A placeholder checksum of the final length, overwritten when verified.
            start = _codec.write_header(
                f, [(t.name, t.dtype, tuple(t.shape)) for t in h.manifest.tensors],
                {"format": "pt", "coldfuse.base_version": str(h.base_version),
                 "coldfuse.sha256": "0" * 64})
            f.truncate(start + sum(_codec.byte_length(t) for t in h.manifest.tensors))
        s = cls(part, h.base_version, h.model_spec, h.manifest, start)
        s._write_sidecar()
        return s

    @classmethod
    def load(cls, part: str) -> Optional["_PullState"]:
        try:
            with open(part + ".json") as f:
                j = json.load(f)
            m = tensor_pb2.Manifest()
            m.ParseFromString(bytes.fromhex(j["manifest"]))
            s = cls(part, int(j["version"]), j["model_spec"], m, int(j["data_start"]))
            s.tensor, s.offset = int(j["tensor"]), int(j["offset"])
            # The hash of what is kept: read back from the file (a rare path).
            s.done = s.starts[s.tensor] + s.offset if s.tensor < len(s.sizes) else s.total
            with open(part, "rb") as f:
                f.seek(s.data_start)
                left = s.done
                while left > 0:
                    b = f.read(min(left, 8 << 20))
                    if not b:
                        return None
                    s.sha.update(b)
                    left -= len(b)
            return s
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def _write_sidecar(self, tensor: Optional[int] = None, offset: Optional[int] = None) -> None:
        tmp = self.part + ".json.tmp"
        with open(tmp, "w") as f:
            json.dump({"version": self.version, "model_spec": self.model_spec,
                       "manifest": self.manifest.SerializeToString().hex(),
                       "data_start": self.data_start,
                       "tensor": self.tensor if tensor is None else tensor,
                       "offset": self.offset if offset is None else offset}, f)
        os.replace(tmp, self.part + ".json")

    def checkpoint(self, f) -> None:
        """Makes what arrived durable and records it (up to the last 1 MiB boundary), so a
        process killed from here on is continued by the next pull, not restarted."""
        f.flush()
        os.fsync(f.fileno())
        self._write_sidecar(self.tensor, self.offset - self.offset % CHUNK)

    def write(self, f, index: int, offset: int, data: bytes) -> None:
        if (index, offset) != (self.tensor, self.offset) and offset == 0 and \
                self.offset == 0 and self.tensor < index <= len(self.sizes) and \
                all(self.sizes[i] == 0 for i in range(self.tensor, index)):
            self.tensor = index  # zero-byte tensors send no chunk
        if index != self.tensor or offset != self.offset or \
                offset + len(data) > self.sizes[index]:
            raise Error(grpc.StatusCode.DATA_LOSS,
                        f"PullBase sent tensor {index} at {offset}, expected tensor "
                        f"{self.tensor} at {self.offset}")
        f.seek(self.data_start + self.starts[index] + offset)
        f.write(data)
        self.sha.update(data)
        self.offset += len(data)
        before = self.done
        self.done += len(data)
        if self.offset == self.sizes[index]:
            self.tensor += 1
            self.offset = 0
        if before // SIDECAR_EVERY != self.done // SIDECAR_EVERY:
            self.checkpoint(f)

    def save(self, f) -> None:
        """Keeps what arrived up to the last 1 MiB boundary of the current tensor (where
        the protocol can resume), so another attempt or process continues from there."""
        keep = self.offset - self.offset % CHUNK
        if keep != self.offset:
            self.done -= self.offset - keep
            self.offset = keep
            # The hash must stop there too: recompute it from the file.
            self.sha = hashlib.sha256()
            f.flush()
            with open(self.part, "rb") as r:
                r.seek(self.data_start)
                left = self.done
                while left > 0:
                    b = r.read(min(left, 8 << 20))
                    self.sha.update(b)
                    left -= len(b)
        f.flush()
        os.fsync(f.fileno())
        self._write_sidecar()

    def finish(self, f, path: str, trailer: tensor_pb2.StreamTrailer,
               on_wire: int) -> PulledBase:
        digest = self.sha.digest()
        if self.done != self.total or trailer.total_bytes != self.total:
            raise Error(grpc.StatusCode.DATA_LOSS,
                        f"base v{self.version}: got {self.done} of {self.total} bytes "
                        f"(trailer says {trailer.total_bytes})")
        if digest != trailer.sha256:
            raise Error(grpc.StatusCode.DATA_LOSS,
                        f"base v{self.version}: SHA-256 mismatch ({digest.hex()} received, "
                        f"{trailer.sha256.hex()} sent)")
        # Put the verified checksum where the placeholder is (same length).
        f.seek(0)
        head = f.read(self.data_start)
        at = head.find(b'"coldfuse.sha256":"' + b"0" * 64 + b'"')
        if at >= 0:
            f.seek(at + len(b'"coldfuse.sha256":"'))
            f.write(digest.hex().encode())
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(self.part, path)
        try:
            os.unlink(self.part + ".json")
        except FileNotFoundError:
            pass
        return PulledBase(self.version, path, digest, self.model_spec, self.manifest, on_wire)


# ------------------------------------------------------------------------ push sources

def _to_numpy(t: TensorLike) -> Tuple[int, np.ndarray]:
    """A tensor's dtype (proto enum) and its raw values as a contiguous numpy array."""
    if isinstance(t, np.ndarray):
        a = t
    else:
        try:
            import torch
        except ImportError:  # pragma: no cover
            raise TypeError(f"cannot send a {type(t).__name__}: give numpy arrays") from None
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"cannot send a {type(t).__name__}: give numpy arrays or tensors")
        t = t.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            return tensor_pb2.BF16, t.view(torch.int16).numpy().view("<u2")
        a = t.numpy()
    kinds = {np.dtype("float32"): tensor_pb2.F32, np.dtype("float16"): tensor_pb2.F16,
             np.dtype("float64"): tensor_pb2.F64}
    code = kinds.get(a.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"cannot send dtype {a.dtype}: coldfuse moves float32, float16, "
                        "bfloat16 and float64 tensors")
    return code, np.ascontiguousarray(a, dtype=_codec.RAW[code])


class _Plan:
    def __init__(self, specs: List[tensor_pb2.TensorSpec],
                 produce: List[Callable[[], np.ndarray]]):
        self.specs = specs
        self._produce = produce
        self.total = sum(_codec.byte_length(s) for s in specs)
        self._cache: Tuple[int, Optional[memoryview]] = (-1, None)

    def bytes_of(self, index: int) -> memoryview:
        """The bytes sent for tensor `index` (made once per attempt, one tensor at a
        time: memory holds at most one converted tensor)."""
        if self._cache[0] != index:
            self._cache = (index, memoryview(self._produce[index]()))
        return self._cache[1]


class _Source:
    def __init__(self, lookup: Callable[[str], Optional[Tuple[int, Tuple[int, ...], Callable]]],
                 names: Sequence[str], what: str):
        self._lookup = lookup
        self._names = names
        self._what = what

    @classmethod
    def open(cls, tensors: Union[str, Mapping[str, TensorLike]]) -> "_Source":
        if isinstance(tensors, (str, os.PathLike)):
            files = _checkpoint_files(str(tensors))
            by_name: Dict[str, _codec.SafetensorsFile] = {}
            for f in files:
                for n in f.entries:
                    by_name[n] = f

            def lookup_file(name: str):
                f = by_name.get(name)
                if f is None:
                    return None
                e = f.entries[name]
                return e.dtype, e.shape, (lambda: f.raw(name))
            return cls(lookup_file, list(by_name), str(tensors))

        def lookup_map(name: str):
            if name not in tensors:
                return None
            code, raw = _to_numpy(tensors[name])
            return code, tuple(raw.shape), (lambda: raw)
        return cls(lookup_map, list(tensors), "the tensors given")

    def plan(self, manifest: tensor_pb2.Manifest, forced: Optional[int],
             base: Optional[_codec.SafetensorsFile], int8_block: int = 0) -> _Plan:
        specs: List[tensor_pb2.TensorSpec] = []
        produce: List[Callable[[], np.ndarray]] = []
        missing, wrong = [], []
        for want in manifest.tensors:
            found = self._lookup(want.name)
            if found is None:
                missing.append(want.name)
                continue
            code, shape, raw = found
            if tuple(shape) != tuple(want.shape):
                wrong.append(f"{want.name} is {list(shape)}, the base's is {list(want.shape)}")
                continue
            sent = forced if forced is not None else code
            if base is not None and want.name not in base.entries:
                missing.append(f"{want.name} (in the base pulled for the delta)")
                continue
            if int8_block:
                # The scales (F32, one per block), then the int8 values: quantised once,
                # when the scales are made, kept for the values that follow.
                n = _codec.num_elements(want.shape)
                specs.append(tensor_pb2.TensorSpec(name=want.name + "#scale",
                                                   dtype=tensor_pb2.F32,
                                                   shape=[(n + int8_block - 1) // int8_block]))
                specs.append(tensor_pb2.TensorSpec(name=want.name, dtype=tensor_pb2.I8,
                                                   shape=want.shape))
                held: Dict[str, np.ndarray] = {}

                def scales(raw=raw, code=code, name=want.name, held=held) -> np.ndarray:
                    b = base.entries[name]
                    diff = _codec.to_float64(raw(), code).reshape(-1) - \
                        _codec.to_float64(base.raw(name), b.dtype).reshape(-1)
                    s, held["q"] = _codec.quantize_int8(diff, int8_block)
                    return s.astype("<f4").view(np.uint8)

                def values(held=held, scales=scales) -> np.ndarray:
                    if "q" not in held:  # a resumed upload may start at the values
                        scales()
                    return held.pop("q").view(np.uint8)
                produce.extend([scales, values])
                continue
            specs.append(tensor_pb2.TensorSpec(name=want.name, dtype=sent, shape=want.shape))

            def make(raw=raw, code=code, sent=sent, name=want.name) -> np.ndarray:
                values = raw()
                if base is not None:
                    b = base.entries[name]
                    diff = _codec.to_float64(values, code).reshape(-1) - \
                        _codec.to_float64(base.raw(name), b.dtype).reshape(-1)
                    return _codec.encode(diff, sent).view(np.uint8)
                if code == sent:  # as it is: a view (of the file's map), no copy
                    return np.ascontiguousarray(values).reshape(-1).view(np.uint8)
                return _codec.convert(values.reshape(-1), code, sent).view(np.uint8)
            produce.append(make)
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"{len(missing)} of the base's tensors are missing from "
                             f"{self._what}: {', '.join(missing[:10])}"
                             + (" ..." if len(missing) > 10 else ""))
            if wrong:
                parts.append("shapes differ: " + "; ".join(wrong[:10]))
            raise Error(grpc.StatusCode.INVALID_ARGUMENT,
                        "; ".join(parts) + " (was it fine-tuned from this server's model?)")
        return _Plan(specs, produce)


def _checkpoint_files(path: str) -> List[_codec.SafetensorsFile]:
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [_codec.SafetensorsFile(os.path.join(path, s)) for s in shards]
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(single):
            return [_codec.SafetensorsFile(single)]
        raise Error(grpc.StatusCode.INVALID_ARGUMENT,
                    f"{path} has neither model.safetensors nor model.safetensors.index.json")
    return [_codec.SafetensorsFile(path)]


def load_safetensors(path: str, *, framework: str = "torch") -> Dict[str, TensorLike]:
    """The float tensors of a safetensors file as {name: tensor}, views of its memory map
    (copy-on-write: changing them never changes the file). framework: "torch" (the
    file's dtypes) or "numpy" (BF16 as float32)."""
    f = _codec.SafetensorsFile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="c") if f.entries else None
    out: Dict[str, TensorLike] = {}
    if framework == "torch":
        import torch
        for name, e in f.entries.items():
            raw = mm[e.begin:e.end].view(_codec.RAW[e.dtype]).reshape(e.shape)
            if e.dtype == tensor_pb2.BF16:
                out[name] = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
            else:
                out[name] = torch.from_numpy(raw)
    elif framework == "numpy":
        for name, e in f.entries.items():
            raw = mm[e.begin:e.end].view(_codec.RAW[e.dtype]).reshape(e.shape)
            out[name] = _codec.bf16_bits_to_f32(raw) if e.dtype == tensor_pb2.BF16 else raw
    else:
        raise ValueError("framework must be 'torch' or 'numpy'")
    return out
