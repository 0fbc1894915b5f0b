"""A real coldfused on loopback with TLS and tokens for the Python client's tests.

The binaries come from $COLDFUSE_BUILD (default: <repo>/build); certificates from
deploy/make-certs.sh; tokens from `coldfusectl token create`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("COLDFUSE_BUILD", os.path.join(REPO, "build"))
COLDFUSED = os.path.join(BUILD, "server", "coldfused")
CTL = os.path.join(BUILD, "ctl", "coldfusectl")
CLIENT = os.path.join(BUILD, "client", "daemon", "coldfuse-client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A coldfused process over a data folder that outlives restarts."""

    def __init__(self, root: str, args):
        self.root = root
        self.args = list(args)
        self.data = os.path.join(root, "server-data")
        self.certs = os.path.join(root, "certs")
        self.tokens = os.path.join(root, "tokens")
        os.makedirs(self.tokens, exist_ok=True)
        # Client certificates too, for a mutual-TLS server ({certs} in args: this folder).
        subprocess.run(["bash", os.path.join(REPO, "deploy", "make-certs.sh"), self.certs,
                        "--client", "alice", "--client", "ops"],
                       check=True, capture_output=True)
        self.args = [a.replace("{certs}", self.certs) for a in self.args]
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ca = os.path.join(self.certs, "ca.crt")
        self.proc = None
        self.log = os.path.join(root, "coldfused.log")
        self.start()
        for name, role in (("alice", "contributor"), ("bob", "contributor"),
                           ("vera", "viewer"), ("eve", "evaluator")):
            self.ctl("token", "create", f"--name={name}", f"--role={role}",
                     f"--out={self.token(name)}")

    def token(self, name: str) -> str:
        return os.path.join(self.tokens, f"{name}.token")

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [COLDFUSED, f"--data_dir={self.data}", f"--listen={self.address}",
                 f"--tls_cert={self.certs}/server.crt", f"--tls_key={self.certs}/server.key",
                 f"--bootstrap_token_file={self.token('operator')}", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coldfused exited {self.proc.returncode}: "
                                   + open(self.log).read()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    if os.path.exists(self.token("operator")):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("coldfused did not start listening")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def ctl(self, *args, token: str = "operator", check: bool = True) -> str:
        r = subprocess.run([CTL, f"--server={self.address}", f"--tls_ca={self.ca}",
                            f"--tls_cert={self.certs}/ops.crt", f"--tls_key={self.certs}/ops.key",
                            f"--token_file={self.token(token)}", *args],
                           capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"coldfusectl {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r.stdout + r.stderr

    def client(self, token: str = "alice", **kw):
        from coldfuse import Client
        return Client(self.address, ca=self.ca, token_file=self.token(token), **kw)


class CuttingProxy:
    """A TCP proxy to `port` that cuts the first connection (both directions) once
    `cut_after` bytes went from the client to the server: a broken network, not a server
    that knows it is stopping. Later connections pass untouched."""

    def __init__(self, port: int, cut_after: int, refuse_after_cut: bool = False):
        self.target = port
        self.cut_after = cut_after
        self.refuse_after_cut = refuse_after_cut
        self.cut = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse_after_cut and self.cut.is_set():  # the network stays down
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            cuttable = not self.cut.is_set()
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, pair, cuttable),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False),
                             daemon=True).start()

    def _pump(self, src, dst, pair, counting: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counting and not self.cut.is_set() and sent + len(data) >= self.cut_after:
                    self.cut.set()
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(*args):
        s = Server(str(tmp_path / f"server{len(servers)}"), args)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.stop()
