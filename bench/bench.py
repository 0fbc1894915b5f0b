#!/usr/bin/python3
"""coldfuse large-model benchmark: this machine's limits, coldfuse per K, in-memory baselines.

    make bench                                   # builds, then runs this with the defaults
    /usr/bin/python3 bench/bench.py [--model_mb 1024] [--k 2,4,8,16] [--work_dir DIR] ...

Steps (see docs/benchmarks.md):
 1. limits  build/bench/bench_limits: memcpy, loopback TCP, disk write+fsync, disk read
 2. models  bench/make_models.py: a BF16 base (model.safetensors) and max(K) contributions
 3. coldfuse, per K: a fresh `coldfused --insecure` and data folder; `coldfusectl init
    --from`, K timed `push`es (the K-th closes the round), fusion timed until `wait
    --base=1` returns, the server's VmHWM, a timed `pull --version=1`, a timed `export`
    whose file is checked (layout, size, and sampled values against the mean of the
    contributions). Then the same for the largest K over TLS with tokens (--no_tls skips).
 4. baselines (bench/baselines.py, one process each): numpy FedAvg as Flower does it, and
    PyTorch state-dict averaging, where their estimated peak memory fits in 70% of RAM
 5. bench/results/latest.json (every raw number) and a table with the targets met or not

Everything lives under a fresh folder in --work_dir (default /tmp/coldfuse-bench), removed
at the end; servers are killed on any exit. Exit status: 0 when every part ran (whether or
not the targets were met), 1 when a part could not run (e.g. coldfusectl lacks a command),
2 on bad arguments.
"""
import argparse
import atexit
import datetime
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
try:
    import numpy as np
except ImportError:
    sys.exit("bench: numpy is missing: run with Debian's /usr/bin/python3 "
             "(apt-get install python3-numpy python3-torch)")
import baselines  # noqa: E402
import make_models  # noqa: E402

GB = 1e9
MB = 1e6
SHARED_PREFIX = "model."
NUM_EXAMPLES = 1000
CTL_TIMEOUT_S = 3600
# Names of the coldfusectl interface this harness drives (ctl/main.cc).
CTL_COMMANDS = ["init", "push", "wait", "pull", "export", "round", "token"]
CTL_FLAGS = ["from", "shared_prefix", "checkpoint", "name", "num_examples", "out", "base",
             "timeout_s"]
T0 = time.time()
KEEP = False  # --keep: leave every work file in place


class BenchError(Exception):
    """A part of the benchmark cannot run; the message says why and what to do."""


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- cleanup
_servers = []       # Popen objects of running coldfused processes
EXTRA_SERVER_ARGS = []  # --server_args, e.g. --blob_files=false
_cleanup_dirs = []  # folders to remove at exit
_remove_if_empty = []  # the work dir, if this run made it


def _stop(proc, grace_s=60):
    if proc.poll() is not None:
        return proc.returncode
    proc.terminate()
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _cleanup():
    for p in list(_servers):
        try:
            _stop(p, 10)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    _servers.clear()
    for d in reversed(_cleanup_dirs):
        shutil.rmtree(d, ignore_errors=True)
    _cleanup_dirs.clear()
    for d in _remove_if_empty:
        try:
            os.rmdir(d)
        except OSError:
            pass


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- helpers
def run(args, timeout=CTL_TIMEOUT_S, check=True, what=None):
    """Runs a command; returns (stdout, stderr, seconds). Raises BenchError on failure."""
    t = time.perf_counter()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{what or args[0]}: no answer within {timeout} s") from e
    dt = time.perf_counter() - t
    if check and p.returncode != 0:
        raise BenchError(f"{what or ' '.join(args)} failed (exit {p.returncode}):\n"
                         f"{p.stderr.strip() or p.stdout.strip()}")
    return p.stdout, p.stderr, dt


def meminfo_total():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_info(work_dir):
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "mem_total_bytes": meminfo_total(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "work_dir_fs": fs_type(work_dir),
        "loadavg_start": loadavg(),
        "git_commit": commit,
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def fs_type(path):
    """The file system type of the mount holding path (from /proc/mounts)."""
    path = os.path.realpath(path)
    best, fstype = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1].replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    return fstype


def vm_status(pid):
    """VmHWM and VmRSS of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    return out.get("VmHWM", 0), out.get("VmRSS", 0)


def dir_bytes(path):
    """{"total", "sst", "wal", "other"}: bytes of the files under path (a RocksDB folder)."""
    out = {"total": 0, "sst": 0, "wal": 0, "other": 0}
    for root, _, files in os.walk(path):
        for name in files:
            try:
                n = os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
            kind = "sst" if name.endswith(".sst") else "wal" if name.endswith(".log") else "other"
            out[kind] += n
            out["total"] += n
    return out


def settle():
    """Writes back dirty pages (e.g. the last run's store) so they do not slow the next
    measurement; the page cache itself is left alone."""
    t = time.perf_counter()
    os.sync()
    return time.perf_counter() - t


def pct(x, of):
    return 100.0 * x / of if x is not None and of else None


# --------------------------------------------------------------------------- 1. limits
def measure_limits(build, work, a):
    exe = os.path.join(build, "bench", "bench_limits")
    if not os.path.exists(exe):
        raise BenchError(f"{exe} is missing: build it first (make build, or "
                         f"cmake --build {build} --target bench_limits)")
    log("limits: memcpy, loopback TCP, disk write+fsync, disk read (bench_limits)")
    out, _, dt = run([exe, f"--dir={work}", f"--mem_mib={a.limits_mem_mib}",
                      f"--tcp_mib={a.limits_tcp_mib}", f"--disk_mib={a.limits_disk_mib}"],
                     timeout=1800, what="bench_limits")
    lim = json.loads(out)
    lim["seconds"] = dt
    floor = os.path.join(build, "bench", "bench_grpc_floor")
    if os.path.exists(floor):  # gRPC's own streaming rate and SHA-256: transfer floors
        out, _, _ = run([floor, f"--mib={a.limits_tcp_mib}"], timeout=1800,
                        what="bench_grpc_floor")
        lim.update(json.loads(out))
        log(f"floors: gRPC 1 MiB messages, nothing stored: download "
            f"{lim['grpc_download_gbps']:.2f} GB/s, upload {lim['grpc_upload_gbps']:.2f} GB/s; "
            f"SHA-256 {lim['sha256_gbps']:.2f} GB/s")
    log(f"limits: memcpy {lim['memcpy_gbps']:.2f} GB/s, TCP {lim['tcp_loopback_gbps']:.2f} GB/s, "
        f"disk write {lim['disk_write_fsync_gbps']:.2f} GB/s, read {lim['disk_read_gbps']:.2f} GB/s")
    return lim


# --------------------------------------------------------------------------- 2. models
def check_disk(work, a, kmax):
    layout = make_models.layout(a.model_mb)
    total = sum(2 * make_models.numel(s) for _, s in layout)
    shared = sum(2 * make_models.numel(s) for n, s in layout if n.startswith(SHARED_PREFIX))
    reuse = a.models_dir and os.path.exists(os.path.join(a.models_dir, "models.json"))
    models = 0 if reuse else (kmax + 1) * total
    # A run stores K contributions and two bases (+ RocksDB overhead) and one export.
    # (Measured: RocksDB holds ~1.75x the raw bytes before compaction.)
    per_run = int((kmax + 2) * shared * 2) + shared
    need = models + per_run + (2 << 30)
    free = shutil.disk_usage(work).free
    if free < need:
        raise BenchError(f"{work} has {free / GB:.1f} GB free; this run needs about "
                         f"{need / GB:.1f} GB (models {models / GB:.1f} GB + one server run "
                         f"{per_run / GB:.1f} GB + 2 GB headroom): free space, or lower "
                         f"--model_mb / the largest --k, or pick another --work_dir")
    return need


def prepare_models(work, a, kmax):
    if a.models_dir:
        info_path = os.path.join(a.models_dir, "models.json")
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
            if (info["model_mb"] == a.model_mb and info["seed"] == a.seed and info["k"] >= kmax
                    and all(os.path.exists(p) for p in [info["base"]] + info["contributions"])):
                log(f"models: reusing {a.models_dir}")
                info["reused"] = True
                return info
        out = a.models_dir
    else:
        out = os.path.join(work, "models")
    log(f"models: generating a {a.model_mb:g} MiB BF16 base and {kmax} contributions in {out}")
    stdout, _, dt = run([sys.executable, os.path.join(HERE, "make_models.py"), "--out", out,
                         "--model_mb", str(a.model_mb), "--k", str(kmax), "--seed", str(a.seed)],
                        timeout=7200, what="make_models.py")
    with open(os.path.join(out, "models.json")) as f:
        info = json.load(f)
    info["wall_s"] = dt
    log(f"models: {info['num_shared_tensors']} shared tensors, {info['shared_bytes'] / GB:.3f} GB "
        f"({info['shared_params'] / 1e6:.1f} M params) in {dt:.1f} s")
    return info


# --------------------------------------------------------------------------- 3. coldfuse
def check_ctl(ctl):
    """What the harness needs from coldfusectl and is not there (a list of strings)."""
    missing = []
    try:
        help_out = subprocess.run([ctl, "--helpfull"], capture_output=True, text=True,
                                  timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return [f"{ctl} does not run ({e})"]
    flags = set(re.findall(r"^\s+--(\w+) \(", help_out, re.M))
    for fl in CTL_FLAGS:
        if fl not in flags:
            missing.append(f"flag --{fl}")
    for cmd in CTL_COMMANDS:
        # An unknown command fails at once; a known one tries port 1 (and may retry: a
        # command still running after 5 s exists).
        try:
            p = subprocess.run([ctl, "--server=127.0.0.1:1", "--timeout_s=1", cmd],
                               capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            continue
        if "unknown command" in p.stderr:
            missing.append(f"command '{cmd}'")
    return missing


class Server:
    """One coldfused on an ephemeral loopback port with its own data folder."""

    def __init__(self, build, run_dir, k, tls):
        self.dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.data = os.path.join(run_dir, "data")
        port_file = os.path.join(run_dir, "port")
        self.log_path = os.path.join(run_dir, "coldfused.log")
        args = [os.path.join(build, "server", "coldfused"), f"--data_dir={self.data}",
                "--listen=127.0.0.1:0", f"--port_file={port_file}",
                f"--min_contributions={k}", "--round_timeout_s=0"] + EXTRA_SERVER_ARGS
        self.tls_args = []
        self.operator_token = None
        if tls:
            certs = os.path.join(run_dir, "certs")
            run(["bash", os.path.join(ROOT, "deploy", "make-certs.sh"), certs],
                timeout=120, what="deploy/make-certs.sh")
            self.operator_token = os.path.join(run_dir, "operator.token")
            args += [f"--tls_cert={certs}/server.crt", f"--tls_key={certs}/server.key",
                     f"--bootstrap_token_file={self.operator_token}"]
            self.tls_args = [f"--tls_ca={certs}/ca.crt"]
        else:
            args.append("--insecure")
        self.args = args
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT)
        _servers.append(self.proc)
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if self.proc.poll() is not None:
                raise BenchError(f"coldfused exited ({self.proc.returncode}) at start:\n"
                                 f"{self.log_tail()}")
            if time.time() > deadline:
                raise BenchError(f"coldfused wrote no port file within 60 s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.addr = "127.0.0.1:" + open(port_file).read().strip()

    def log_tail(self, n=30):
        try:
            if not self.logf.closed:
                self.logf.flush()
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def ctl(self, ctl, *cmd, token=None, timeout=CTL_TIMEOUT_S):
        """Runs `coldfusectl --server=ADDR [tls] CMD...`; returns (stdout, seconds)."""
        args = [ctl, f"--server={self.addr}", f"--timeout_s={CTL_TIMEOUT_S}"] + self.tls_args
        tok = token or self.operator_token
        if tok:
            args.append(f"--token_file={tok}")
        args += list(cmd)
        try:
            out, _, dt = run(args, timeout=timeout, what="coldfusectl " + " ".join(cmd))
        except BenchError as e:
            if self.proc.poll() is not None:
                raise BenchError(f"{e}\ncoldfused exited ({self.proc.returncode}):\n"
                                 f"{self.log_tail()}") from e
            raise
        return out, dt

    def stop(self):
        rc = _stop(self.proc)
        if self.proc in _servers:
            _servers.remove(self.proc)
        self.logf.close()
        return rc


def cli_seconds(text):
    """The seconds coldfusectl itself reports ("... bytes in 1.23 s ..."), if any."""
    m = re.search(r"\bin ([0-9]+(?:\.[0-9]+)?) s\b", text)
    return float(m.group(1)) if m else None


def is_absl_version_banner(text):
    """abseil's built-in --version flag prints the program name and its build mode."""
    return "NDEBUG" in text or text.strip() == "coldfusectl"


def check_export(out_dir, info, k):
    """Checks the exported safetensors (one file, or shards) against the model layout and
    the contributions."""
    files = sorted(glob.glob(os.path.join(out_dir, "**", "*.safetensors"), recursive=True))
    if not files:
        raise BenchError(f"export wrote no .safetensors file in {out_dir}: "
                         f"{os.listdir(out_dir) if os.path.isdir(out_dir) else 'no folder'}")
    shared = [t for t in info["tensors"] if t["name"].startswith(SHARED_PREFIX)]
    want = {t["name"]: t["shape"] for t in shared}
    got, where, problems, sizes, headers = {}, {}, [], 0, 0
    for path in files:
        tensors, start = make_models.read_header(path)
        size = os.path.getsize(path)
        data_bytes = sum(e - b for _, _, _, b, e in tensors)
        if size != start + data_bytes:
            problems.append(f"{os.path.basename(path)} is {size} bytes, expected header "
                            f"{start} + data {data_bytes}")
        sizes += size
        headers += start
        for name, dtype, shape, b, e in tensors:
            if name in got:
                problems.append(f"{name} appears twice")
            got[name] = shape
            where[name] = (path, start + b, dtype)
    if got != want:
        extra = sorted(set(got) - set(want))[:3]
        lacking = sorted(set(want) - set(got))[:3]
        wrong = sorted(n for n in set(got) & set(want) if got[n] != want[n])[:3]
        problems.append(f"tensors differ: extra {extra}, missing {lacking}, wrong shape {wrong}")
    dtypes = sorted({d for _, _, d in where.values()})
    if dtypes != ["BF16"]:
        problems.append(f"dtypes {dtypes}, expected BF16")
    if sizes - headers != info["shared_bytes"]:
        problems.append(f"{sizes - headers} data bytes, expected the shared "
                        f"{info['shared_bytes']}")
    if problems:
        raise BenchError(f"export in {out_dir}: " + "; ".join(problems))

    # Sampled values: the fused tensor must be the mean of the K contributions rounded to
    # BF16. Allowed error: one BF16 ulp (2^-7 relative) of the exact mean, or 1e-9 absolute
    # (where the exact mean is 0, arithmetic in another order leaves ~1e-20).
    sample = [shared[0]["name"], shared[len(shared) // 2]["name"], shared[-2]["name"]]
    headers_k = [make_models.read_header(p) for p in info["contributions"][:k]]
    max_ulp, n_exact, n_total, worst = 0, 0, 0, 0.0
    for name in dict.fromkeys(sample):
        path, off, _ = where[name]
        n = min(1 << 20, make_models.numel(want[name]))
        got_bits = np.fromfile(path, dtype=np.uint16, count=n, offset=off)
        acc = np.zeros(n, np.float64)
        for path_k, (ct, cstart) in zip(info["contributions"][:k], headers_k):
            cb = next(t[3] for t in ct if t[0] == name)
            bits = np.fromfile(path_k, dtype=np.uint16, count=n, offset=cstart + cb)
            acc += (bits.astype(np.uint32) << 16).view(np.float32)
        exact = acc / k
        want_bits = np.empty(n, np.uint16)
        make_models.f32_to_bf16_bits(exact.astype(np.float32), np.empty(n, np.uint32), want_bits)
        n_exact += int((got_bits == want_bits).sum())
        got_vals = (got_bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        allowed = np.maximum(np.abs(exact) * 2.0 ** -7, 1e-9)
        worst = max(worst, float((np.abs(got_vals - exact) / allowed).max()))
        far = np.abs(exact) > 1e-6
        if far.any():
            diff = np.abs(got_bits[far].astype(np.int32) - want_bits[far].astype(np.int32))
            max_ulp = max(max_ulp, int(diff.max()))
        n_total += n
    check = {"files": [os.path.relpath(p, out_dir) for p in files], "file_bytes": sizes,
             "header_bytes": headers, "sampled_values": n_total,
             "exact_fraction": n_exact / n_total, "max_ulp_diff": max_ulp,
             "max_error_over_allowed": worst}
    if worst > 1:
        raise BenchError(f"exported values are not the mean of the contributions: error up "
                         f"to {worst:.1f}x the allowed one BF16 ulp (max {max_ulp} ulps where "
                         f"|mean| > 1e-6) over {n_total} sampled values")
    return check


def run_coldfuse(build, work, info, k, tls, res):
    """One server run; fills `res` as it goes (so a failure keeps what was measured)."""
    ctl = os.path.join(build, "ctl", "coldfusectl")
    tag = f"K={k}{' TLS' if tls else ''}"
    run_dir = os.path.join(work, f"run-k{k}{'-tls' if tls else ''}")
    shared = info["shared_bytes"]
    res.update(k=k, tls=tls, shared_bytes=shared, shared_params=info["shared_params"])
    res["sync_before_s"] = settle()
    server = Server(build, run_dir, k, tls)
    try:
        res["server_args"] = server.args[1:]
        _, dt = server.ctl(ctl, "init", f"--from={info['base']}",
                           f"--shared_prefix={SHARED_PREFIX}")
        res["init_s"] = dt
        log(f"{tag}: init {shared / GB:.3f} GB in {dt:.2f} s")

        tokens = [None] * k
        if tls:  # with tokens on, a contributor is its token's name: one token each
            for j in range(1, k + 1):
                tokens[j - 1] = os.path.join(run_dir, f"contrib-{j}.token")
                server.ctl(ctl, "token", "create", f"--name=contrib-{j}", "--role=contributor",
                           f"--out={tokens[j - 1]}")

        pushes = []
        for j in range(1, k + 1):
            out, dt = server.ctl(ctl, "push", f"--checkpoint={info['contributions'][j - 1]}",
                                 f"--name=contrib-{j}", f"--num_examples={NUM_EXAMPLES}",
                                 token=tokens[j - 1])
            pushes.append({"contributor": f"contrib-{j}", "seconds": dt,
                           "mbps": shared / dt / MB, "cli_seconds": cli_seconds(out),
                           "stdout": out.strip()[-300:]})
            log(f"{tag}: push {j}/{k}: {dt:.2f} s ({shared / dt / MB:.0f} MB/s)")
        t_last_push = time.perf_counter()
        res["pushes"] = pushes
        upload = [p["mbps"] for p in pushes]
        res["upload_mbps_mean"] = sum(upload) / len(upload)
        res["upload_mbps_min"] = min(upload)
        res["upload_mbps_max"] = max(upload)

        server.ctl(ctl, "wait", "--base=1", "--timeout_s=3600")
        fusion_s = time.perf_counter() - t_last_push
        hwm, rss = vm_status(server.proc.pid)
        res.update(fusion_s=fusion_s, fusion_params_per_s=info["shared_params"] / fusion_s,
                   fusion_input_gbps=k * shared / fusion_s / GB,
                   server_vmhwm_after_fusion_bytes=hwm, server_vmrss_after_fusion_bytes=rss)
        log(f"{tag}: fusion {fusion_s:.2f} s ({info['shared_params'] / fusion_s / 1e6:.0f} "
            f"Mparam/s, input {k * shared / fusion_s / GB:.2f} GB/s), server VmHWM "
            f"{hwm / MB:.0f} MB")

        out, _ = server.ctl(ctl, "round", "1", "--json")
        try:
            rnd = json.loads(out)
            states = [c.get("state") for c in rnd.get("contributions", [])]
            res["round1"] = {"state": rnd.get("state"), "contributions": len(states),
                             "quarantined": states.count("QUARANTINED"),
                             "result_base_version": rnd.get("result_base_version")}
            if rnd.get("state") != "CLOSED" or len(states) != k or "QUARANTINED" in states:
                raise BenchError(f"{tag}: round 1 did not close with {k} accepted "
                                 f"contributions: {res['round1']}")
        except json.JSONDecodeError as e:
            raise BenchError(f"{tag}: `round 1 --json` printed no JSON: {out[:300]}") from e

        out, dt = server.ctl(ctl, "pull", "--version=1")
        if is_absl_version_banner(out):
            raise BenchError(
                "`coldfusectl pull --version=1` printed abseil's version banner instead of "
                "pulling: abseil defines a built-in --version flag (show version and exit) "
                "that takes --version before any command sees it. coldfusectl must read "
                "pull/export's version another way (e.g. take --version out of argv before "
                "absl::ParseCommandLine), or this harness's flag name must change.")
        res.update(pull_s=dt, download_mbps=shared / dt / MB, pull_cli_s=cli_seconds(out),
                   pull_stdout=out.strip()[-300:])
        if str(shared) not in out:
            res["pull_warning"] = f"pull did not print the byte count {shared}"
        log(f"{tag}: pull {dt:.2f} s ({shared / dt / MB:.0f} MB/s)")

        export_dir = os.path.join(run_dir, "export")
        out, dt = server.ctl(ctl, "export", "--version=1", f"--out={export_dir}")
        if is_absl_version_banner(out):
            raise BenchError("`coldfusectl export --version=1` printed abseil's version banner "
                             "(see the pull message above: --version is abseil's flag)")
        res.update(export_s=dt, export_mbps=shared / dt / MB)
        res["export_check"] = check_export(export_dir, info, k)
        log(f"{tag}: export {dt:.2f} s ({shared / dt / MB:.0f} MB/s); file checked "
            f"({100 * res['export_check']['exact_fraction']:.2f}% of sampled values exactly "
            f"the BF16 mean, max {res['export_check']['max_ulp_diff']} ulp)")
        if not KEEP:
            shutil.rmtree(export_dir, ignore_errors=True)

        hwm, rss = vm_status(server.proc.pid)
        res.update(server_vmhwm_end_bytes=hwm, server_vmrss_end_bytes=rss,
                   store=dir_bytes(server.data))
    except BenchError as e:
        res["error"] = str(e)
        raise
    finally:
        t = time.perf_counter()
        res["server_exit"] = server.stop()
        res["server_stop_s"] = time.perf_counter() - t
        if res.get("error"):
            res["server_log_tail"] = server.log_tail()
        if not KEEP:
            shutil.rmtree(run_dir, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- 4. baselines
def run_baselines(info, ks, mem_total):
    limit = 0.7 * mem_total
    out = []
    for k in ks:
        files = info["contributions"][:k]
        for method in ("numpy", "torch"):
            est = baselines.estimate(method, files, SHARED_PREFIX)
            r = {"k": k, "method": method, "estimate_bytes": est, "limit_bytes": int(limit)}
            if est > limit:
                r.update(fits=False, result="does not fit")
                log(f"baseline {method} K={k}: does not fit (needs ~{est / GB:.1f} GB > 70% of "
                    f"RAM = {limit / GB:.1f} GB)")
            else:
                r["fits"] = True
                r["sync_before_s"] = settle()
                try:
                    stdout, _, dt = run([sys.executable, os.path.join(HERE, "baselines.py"),
                                         method, "--prefix", SHARED_PREFIX] + files,
                                        timeout=7200, what=f"baselines.py {method} K={k}")
                    r.update(json.loads(stdout.strip().splitlines()[-1]))
                    r["process_wall_s"] = dt
                    log(f"baseline {method} K={k}: {r['total_s']:.2f} s, peak RSS "
                        f"{r['peak_rss_bytes'] / MB:.0f} MB")
                except BenchError as e:
                    r["error"] = str(e)
                    log(f"baseline {method} K={k}: FAILED: {e}")
            out.append(r)
    return out


# --------------------------------------------------------------------------- 5. report
def summarise(results):
    lim = results.get("limits") or {}
    tcp, mem = lim.get("tcp_loopback_gbps"), lim.get("memcpy_gbps")
    dw, dr = lim.get("disk_write_fsync_gbps"), lim.get("disk_read_gbps")
    up_ceiling = min(tcp, dw) * GB / MB if tcp and dw else None             # MB/s
    fusion_ceiling = min(mem, dr) if mem and dr else None                   # GB/s
    g_down, g_up = lim.get("grpc_download_gbps"), lim.get("grpc_upload_gbps")
    shared = (results.get("model") or {}).get("shared_bytes")
    runs = {r["k"]: r for r in results.get("coldfuse", {}).get("runs", []) if not r["tls"]}
    base = {(b["k"], b["method"]): b for b in results.get("baselines", [])}
    rows = []
    for k in results["args"]["k"]:
        r = runs.get(k, {})
        np_b, th_b = base.get((k, "numpy"), {}), base.get((k, "torch"), {})
        row = {"k": k}
        if "upload_mbps_mean" in r:
            row.update(upload_mbps=r["upload_mbps_mean"],
                       upload_pct=pct(r["upload_mbps_mean"], up_ceiling),
                       upload_pct_of_grpc=pct(r["upload_mbps_mean"],
                                              g_up * GB / MB if g_up else None))
        if "fusion_s" in r:
            row.update(fusion_s=r["fusion_s"], fusion_mparams=r["fusion_params_per_s"] / 1e6,
                       fusion_input_gbps=r["fusion_input_gbps"],
                       fusion_pct=pct(r["fusion_input_gbps"], fusion_ceiling),
                       server_peak_rss_bytes=r["server_vmhwm_after_fusion_bytes"])
        if "download_mbps" in r:
            row.update(download_mbps=r["download_mbps"],
                       download_pct=pct(r["download_mbps"], tcp * GB / MB if tcp else None),
                       download_pct_of_grpc=pct(r["download_mbps"],
                                                g_down * GB / MB if g_down else None))
        if shared and dw:
            # Fusion writes and fsyncs the new base: no faster than the disk allows.
            row["fusion_floor_write_s"] = shared / (dw * GB)
        if "export_s" in r:
            row["export_s"] = r["export_s"]
        for name, b in (("numpy", np_b), ("torch", th_b)):
            if b.get("fits") is False:
                row[name] = "does not fit"
            elif "total_s" in b:
                row[name] = {"s": b["total_s"], "rss_bytes": b["peak_rss_bytes"]}
            elif "error" in b:
                row[name] = "failed"
        if isinstance(row.get("numpy"), dict) and "fusion_s" in row:
            row["speedup_vs_numpy"] = row["numpy"]["s"] / row["fusion_s"]
        if isinstance(row.get("torch"), dict) and "fusion_s" in row:
            row["speedup_vs_torch"] = row["torch"]["s"] / row["fusion_s"]
        rows.append(row)

    def target(name, rows_key, ok, value_text, applicable=True):
        return {"target": name, "met": (ok if applicable else None), "value": value_text,
                "rows": rows_key}

    targets = []
    have = [r for r in rows if r.get("upload_pct") is not None]
    if have:
        worst = min(have, key=lambda r: r["upload_pct"])
        targets.append(target("upload >= 60% of min(loopback TCP, disk write)", "all K",
                              worst["upload_pct"] >= 60,
                              f"worst {worst['upload_pct']:.0f}% (K={worst['k']})"))
    have = [r for r in rows if r.get("download_pct") is not None]
    if have:
        worst = min(have, key=lambda r: r["download_pct"])
        targets.append(target("download >= 60% of loopback TCP", "all K",
                              worst["download_pct"] >= 60,
                              f"worst {worst['download_pct']:.0f}% (K={worst['k']})"))
    have = [r for r in rows if r.get("fusion_pct") is not None]
    if have:
        worst = min(have, key=lambda r: r["fusion_pct"])
        targets.append(target("fusion >= 50% of min(memory bw, disk read)", "all K",
                              worst["fusion_pct"] >= 50,
                              f"worst {worst['fusion_pct']:.0f}% (K={worst['k']})"))
    have = [r for r in rows if "speedup_vs_numpy" in r]
    if have:
        worst = min(have, key=lambda r: r["speedup_vs_numpy"])
        targets.append(target("fusion >= 3x numpy FedAvg", "K where numpy fits",
                              worst["speedup_vs_numpy"] >= 3,
                              f"worst {worst['speedup_vs_numpy']:.1f}x (K={worst['k']})"))
    elif results.get("baselines") and any("fusion_s" in r for r in rows):
        targets.append(target("fusion >= 3x numpy FedAvg", "-", None,
                              "numpy fits at no K", applicable=False))
    have = [r for r in rows if "server_peak_rss_bytes" in r]
    if have:
        at = max(have, key=lambda r: r["k"])
        label = "K=16" if at["k"] == 16 else f"K={at['k']} (largest run; 16 not run)"
        targets.append(target("server peak RSS <= 1.5 GB at K=16", label,
                              at["server_peak_rss_bytes"] <= 1.5e9,
                              f"{at['server_peak_rss_bytes'] / MB:.0f} MB at {label}"))
        rss = [r["server_peak_rss_bytes"] for r in have]
        if len(rss) > 1:
            ratio = max(rss) / min(rss)
            targets.append(target("server peak RSS flat in K (max/min <= 1.25)", "all K",
                                  ratio <= 1.25, f"max/min {ratio:.2f}"))
    return rows, targets


def fmt(v, spec, missing="-"):
    return missing if v is None else format(v, spec)


def with_pct(v, p, spec=".0f"):
    if v is None:
        return "-"
    return format(v, spec) + (f" ({p:.0f}%)" if p is not None else "")


def print_report(results):
    m, lim, info = results["machine"], results.get("limits") or {}, results.get("model") or {}
    print()
    print(f"coldfuse benchmark  {results['started']}  commit {m.get('git_commit', '')[:12]}")
    print(f"machine: {m['cpu_model']}, {m['nproc']} cores, {m['mem_total_bytes'] / GB:.1f} GB RAM, "
          f"work dir on {m['work_dir_fs']}")
    busy = max(m.get("loadavg_start", [0])[0], m.get("loadavg_end", [0])[0])
    if busy > 0.5:
        print(f"WARNING: load average {busy:.2f} (start {m.get('loadavg_start')}, end "
              f"{m.get('loadavg_end')}): other work shared this machine; timings are noisy")
    if info:
        print(f"model: {info['num_shared_tensors']} shared BF16 tensors, "
              f"{info['shared_bytes'] / GB:.3f} GB ({info['shared_params'] / 1e6:.1f} M params), "
              f"+ unshared lm_head")
    if lim:
        direct = lim.get("disk_read_direct_gbps")
        print(f"limits: memcpy {lim['memcpy_gbps']:.2f} GB/s | loopback TCP "
              f"{lim['tcp_loopback_gbps']:.2f} GB/s | disk write+fsync "
              f"{lim['disk_write_fsync_gbps']:.2f} GB/s | disk read "
              f"{lim['disk_read_gbps']:.2f} GB/s"
              + (f" (O_DIRECT {direct:.2f})" if direct else ""))
    rows, targets = results.get("summary", []), results.get("targets", [])
    head = ["K", "upload MB/s", "fusion s", "Mparam/s", "input GB/s", "srv RSS MB",
            "download MB/s", "export s", "numpy s/RSS MB", "torch s/RSS MB", "vs numpy"]
    table = []
    for r in rows:
        def base(b):
            if isinstance(b, dict):
                return f"{b['s']:.1f}/{b['rss_bytes'] / MB:.0f}"
            return b or "-"
        table.append([
            str(r["k"]),
            with_pct(r.get("upload_mbps"), r.get("upload_pct")),
            fmt(r.get("fusion_s"), ".2f"),
            fmt(r.get("fusion_mparams"), ".0f"),
            with_pct(r.get("fusion_input_gbps"), r.get("fusion_pct"), ".2f"),
            fmt(r["server_peak_rss_bytes"] / MB if "server_peak_rss_bytes" in r else None, ".0f"),
            with_pct(r.get("download_mbps"), r.get("download_pct")),
            fmt(r.get("export_s"), ".2f"),
            base(r.get("numpy")), base(r.get("torch")),
            fmt(r.get("speedup_vs_numpy"), ".1f") + ("x" if "speedup_vs_numpy" in r else ""),
        ])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h)
              for i, h in enumerate(head)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for t in table:
        print("  ".join(c.rjust(w) for c, w in zip(t, widths)))
    print("(upload % of min(loopback TCP, disk write); input = K x shared bytes read by fusion, "
          "% of min(memcpy, disk read); download % of loopback TCP)")
    if lim.get("grpc_download_gbps"):
        print(f"floors: gRPC alone (1 MiB messages, nothing stored or hashed) streams "
              f"{lim['grpc_download_gbps'] * 1000:.0f} MB/s down, "
              f"{lim['grpc_upload_gbps'] * 1000:.0f} MB/s up; SHA-256 "
              f"{lim['sha256_gbps'] * 1000:.0f} MB/s; writing + fsyncing the new base "
              f"takes at least "
              + (f"{rows[0]['fusion_floor_write_s']:.2f} s" if rows and
                 "fusion_floor_write_s" in rows[0] else "-"))
        for r in rows:
            if "download_pct_of_grpc" in r or "upload_pct_of_grpc" in r:
                print(f"  K={r['k']}: upload {fmt(r.get('upload_pct_of_grpc'), '.0f')}% and "
                      f"download {fmt(r.get('download_pct_of_grpc'), '.0f')}% of gRPC alone")
    for r in results.get("coldfuse", {}).get("runs", []):
        if r.get("tls") and "fusion_s" in r:
            print(f"TLS K={r['k']}: upload {r['upload_mbps_mean']:.0f} MB/s, fusion "
                  f"{r['fusion_s']:.2f} s, download "
                  + (f"{r['download_mbps']:.0f} MB/s" if "download_mbps" in r else "-")
                  + f", server peak RSS {r['server_vmhwm_after_fusion_bytes'] / MB:.0f} MB")
    if targets:
        print()
        print("targets:")
        for t in targets:
            state = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
            print(f"  [{state:>7}] {t['target']}: {t['value']}")
    for e in results.get("errors", []):
        print(f"\nERROR: {e}")


# --------------------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="coldfuse large-model benchmark (docs/benchmarks.md)")
    ap.add_argument("--model_mb", type=float, default=1024,
                    help="shared BF16 size of the model, at least this many MiB (default 1024)")
    ap.add_argument("--k", default="2,4,8,16", help="contributions per round to measure")
    ap.add_argument("--work_dir", default="/tmp/coldfuse-bench",
                    help="a fresh folder is made (and removed) in here")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="CMake build folder")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--models_dir", default="",
                    help="keep generated models here and reuse them when they match")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no_tls", action="store_true", help="skip the TLS run at the largest K")
    ap.add_argument("--skip_limits", action="store_true")
    ap.add_argument("--skip_baselines", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (debugging)")
    ap.add_argument("--server_args", default="",
                    help="extra coldfused flags, space-separated (e.g. --blob_files=false)")
    ap.add_argument("--limits_mem_mib", type=int, default=1024)
    ap.add_argument("--limits_tcp_mib", type=int, default=2048)
    ap.add_argument("--limits_disk_mib", type=int, default=2048)
    a = ap.parse_args(argv)
    EXTRA_SERVER_ARGS.extend(a.server_args.split())
    try:
        a.k = sorted({int(x) for x in a.k.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--k must be a comma-separated list of integers, got {a.k!r}")
    if not a.k or a.k[0] < 1:
        ap.error("--k needs values >= 1")
    if a.model_mb <= 0:
        ap.error("--model_mb must be > 0")
    a.build = os.path.abspath(a.build)
    if a.models_dir:
        a.models_dir = os.path.abspath(a.models_dir)
    return a


def main(argv=None):
    a = parse_args(argv)
    global KEEP
    KEEP = a.keep
    atexit.register(_cleanup)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)

    if not os.path.isdir(a.work_dir):
        os.makedirs(a.work_dir)
        _remove_if_empty.append(a.work_dir)
    if fs_type(a.work_dir) == "tmpfs":
        sys.exit(f"bench: {a.work_dir} is on tmpfs (RAM): its files would distort memory and "
                 f"disk numbers; pass --work_dir on a disk")
    work = tempfile.mkdtemp(prefix="run-", dir=a.work_dir)
    if not a.keep:
        _cleanup_dirs.append(work)
    kmax = max(a.k)
    if loadavg()[0] > 0.5:
        log(f"warning: load average {loadavg()} before starting: other work is running, "
            f"timings will be noisy")
    results = {
        "schema": 1,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "args": {"model_mb": a.model_mb, "k": a.k, "seed": a.seed, "tls": not a.no_tls,
                 "work_dir": a.work_dir},
        "machine": machine_info(a.work_dir),
        "errors": [],
    }
    failed = False
    try:
        check_disk(work, a, kmax)
        if not a.skip_limits:
            results["limits"] = measure_limits(a.build, work, a)
        info = prepare_models(work, a, kmax)
        results["model"] = {k: v for k, v in info.items() if k not in ("contributions", "base")}

        ctl = os.path.join(a.build, "ctl", "coldfusectl")
        cf = {"ok": False, "runs": []}
        results["coldfuse"] = cf
        missing = check_ctl(ctl) if os.path.exists(ctl) else [f"{ctl} (not built)"]
        server_bin = os.path.join(a.build, "server", "coldfused")
        if not os.path.exists(server_bin):
            missing.append(f"{server_bin} (not built)")
        if missing:
            msg = ("the coldfuse part cannot run: coldfusectl/coldfused lack " +
                   ", ".join(missing) + ". The harness drives `init --from --shared_prefix`, "
                   "`push --checkpoint --name --num_examples`, `wait --base`, `pull --version`, "
                   "`export --version --out` (limits, models and baselines were still measured)")
            cf["error"] = msg
            results["errors"].append(msg)
            log("coldfuse: SKIPPED: " + msg)
            failed = True
        else:
            try:
                plan = [(k, False) for k in a.k] + ([] if a.no_tls else [(kmax, True)])
                for k, tls in plan:
                    cf["runs"].append({"k": k, "tls": tls})
                    run_coldfuse(a.build, work, info, k, tls, cf["runs"][-1])
                cf["ok"] = True
            except BenchError as e:
                cf["error"] = str(e)
                results["errors"].append(f"coldfuse: {e}")
                log(f"coldfuse: FAILED: {e}")
                failed = True

        if not a.skip_baselines:
            results["baselines"] = run_baselines(info, a.k, results["machine"]["mem_total_bytes"])
    except BenchError as e:
        results["errors"].append(str(e))
        failed = True
    except (KeyboardInterrupt, SystemExit) as e:
        results["errors"].append(f"interrupted ({type(e).__name__} {e})")
        raise
    finally:
        results["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        results["machine"]["loadavg_end"] = loadavg()
        results["wall_s"] = time.time() - T0
        try:
            results["summary"], results["targets"] = summarise(results)
        except Exception as e:  # noqa: BLE001 - the raw numbers must still be written
            results["errors"].append(f"summary failed: {e!r}")
            failed = True
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
        print_report(results)
        print(f"\nraw numbers: {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
