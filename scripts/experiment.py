#!/usr/bin/env python3
"""ColD Fusion's evaluation protocol (arXiv 2212.01378) with real coldfuse processes.

For every seed and every method of a JSON config (experiments/cpu.json, gpu.json,
smoke.json), a fresh `coldfused` is started and seeded from a pretrained encoder
(`coldfusectl init --from=MODEL` plus the method's `init_args`); each round samples
`contributors_per_round` of the config's *seen* tasks (the same samples for every method
of a seed), runs one `coldfuse-client` daemon per sampled task (`--max_rounds=1`), waits
for the fused base and evaluates it with `coldfuse-client --probe`:

  unseen tasks  few_shot: a fresh head and the body fine-tuned on `few_shot_examples`
                rows; full: on the task's (capped) training set
  seen tasks    full, every `seen_every` rounds and at the last round

The original base v0 ("base": no fusion) is evaluated once per seed, with the same probes
and probe seeds, as every method's round 0. Every number (and every process's wall and
CPU time) goes into OUT/results.json, rewritten after each one, so an interrupted run
keeps what it has; running the same command again resumes it (a method x seed whose
server folder survived continues where it stopped). At the end
scripts/experiment_report.py writes the plots and the markdown table.

  scripts/experiment.py experiments/cpu.json --bin_dir=build --prepare
  scripts/experiment.py experiments/cpu.json --tasks_dir=my-tasks --seen=a,b,c,d,e \\
      --unseen=f,g,h --model=my-encoder --shared_prefix=embeddings.,encoder.
  scripts/experiment.py experiments/cpu.json --estimate       # time estimate only

Python 3.11 standard library only (matplotlib is optional, for the plots). See
docs/experiments.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
csv.field_size_limit(2**31 - 1)  # long documents (20 Newsgroups posts, IMDb reviews)
BASE_METHOD = "base"  # the original base v0, no fusion: every method's round 0
SPLITS = ("train", "dev", "test")
FORMATS = (".csv", ".tsv", ".jsonl")
DEFAULT_MINILM = "models/all-MiniLM-L6-v2"


class ExperimentError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    (no log at {path})"
    return "\n".join("    " + line for line in text[-lines:])


def stable_seed(*parts) -> int:
    """A seed in [1, 2^31) from the parts, the same in every run and Python version."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) % (2**31 - 1) + 1


# --------------------------------------------------------------------------------------
# Configuration

DEFAULTS = {
    "name": "experiment",
    "description": "",
    "tasks_dir": "models/data",
    "seen": [],
    "unseen": [],
    "model": DEFAULT_MINILM,
    "shared_prefix": "embeddings.,encoder.",
    "rounds": 3,
    "contributors_per_round": 2,
    "seeds": [1, 2, 3],
    "jobs": 2,
    "parallel_runs": 2,
    "round_timeout_s": 3600,
    "server_args": ["--outlier_factor=0", "--keep_contribution_rounds=0"],
    "data": {
        "max_train_rows": 2000,
        "max_test_rows": 200,
        "text_column": "text",
        "text_pair_column": "",
        "label_column": "label",
        "tasks": {},
    },
    "train": {
        "steps": 40,
        "batch_size": 16,
        "lr": 5e-5,
        "warmup_ratio": 0.1,
        "max_seq_length": 64,
        "threads": 1,
        "device": "cpu",
        "extra_args": [],
    },
    "eval": {
        "metric": "accuracy",
        "few_shot_examples": 64,
        "few_shot_steps": 16,
        "full_examples": 0,
        "full_steps": 40,
        "seen_steps": 40,
        "seen_every": 1,
        "lr": 0,
        "extra_args": [],
    },
    "methods": [{"name": "mean", "init_args": []}],
    "report": {"markdown": None, "images_dir": None},
    "cost_model": {"step_s": 0.6, "process_s": 6.0, "round_s": 3.0},
}


def merge(defaults: dict, given: dict) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in given.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def split_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def load_config(args) -> dict:
    with open(args.config) as f:
        given = json.load(f)
    unknown = set(given) - set(DEFAULTS) - {"comment", "cut"}
    if unknown:
        raise ExperimentError(f"{args.config}: unknown keys {sorted(unknown)}")
    cfg = merge(DEFAULTS, given)
    # Command-line overrides (a user's own tasks and checkpoint, a shorter run).
    if args.tasks_dir:
        cfg["tasks_dir"] = args.tasks_dir
    if args.model:
        cfg["model"] = args.model
    if args.shared_prefix is not None:
        cfg["shared_prefix"] = args.shared_prefix
    if args.unseen:
        cfg["unseen"] = split_list(args.unseen)
    if args.seen:
        cfg["seen"] = args.seen  # "rest" is resolved against the tasks folder
    if args.seeds:
        cfg["seeds"] = [int(s) for s in split_list(args.seeds)]
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.contributors:
        cfg["contributors_per_round"] = args.contributors
    if args.jobs:
        cfg["jobs"] = args.jobs
    if args.parallel_runs:
        cfg["parallel_runs"] = args.parallel_runs
    if args.methods:
        wanted = split_list(args.methods)
        by_name = {m["name"]: m for m in cfg["methods"]}
        missing = [m for m in wanted if m not in by_name]
        if missing:
            raise ExperimentError(
                f"--methods: {missing} not in the config's methods {sorted(by_name)}")
        cfg["methods"] = [by_name[m] for m in wanted]
    if args.device:
        cfg["train"]["device"] = args.device
    for m in cfg["methods"]:
        if m["name"] == BASE_METHOD:
            raise ExperimentError(f"method name '{BASE_METHOD}' is reserved for the original base")
    cfg["name"] = cfg["name"] or Path(args.config).stem
    return cfg


def resolve_path(p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (REPO / path)


# --------------------------------------------------------------------------------------
# Tasks: find them, cap and shuffle their rows once per seed

def task_file(task_dir: Path, split: str) -> Path | None:
    for ext in FORMATS:
        p = task_dir / (split + ext)
        if p.is_file():
            return p
    return None


def read_rows(path: Path) -> tuple[list[str] | None, list[dict]]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return None, rows
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_rows(path: Path, header: list[str] | None, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    else:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header,
                               delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    tmp.replace(path)


class Task:
    """One task folder (train/test, optional dev; CSV, TSV or JSONL) and its options."""

    def __init__(self, name: str, folder: Path, cfg: dict):
        self.name = name
        self.folder = folder
        d = cfg["data"]
        opts = dict(d.get("tasks", {}).get(name, {}))
        self.text_column = opts.get("text_column", d["text_column"])
        self.text_pair_column = opts.get("text_pair_column", d["text_pair_column"])
        self.label_column = opts.get("label_column", d["label_column"])
        self.train = task_file(folder, "train")
        self.test = task_file(folder, "test")
        self.labels: list[str] = []

    def client_args(self) -> list[str]:
        a = [f"--text_column={self.text_column}", f"--label_column={self.label_column}"]
        if self.text_pair_column:
            a.append(f"--text_pair_column={self.text_pair_column}")
        # The same label ids for every process of a task, whatever rows a file holds.
        if self.labels and not any("," in lab for lab in self.labels):
            a.append("--labels=" + ",".join(self.labels))
        return a


def find_tasks(cfg: dict, seen_arg) -> tuple[list[Task], list[Task], list[str]]:
    tasks_dir = resolve_path(cfg["tasks_dir"])
    present = sorted(p.name for p in tasks_dir.iterdir()
                     if p.is_dir() and task_file(p, "train") and task_file(p, "test")) \
        if tasks_dir.is_dir() else []
    unseen_names = list(cfg["unseen"])
    seen_names = cfg["seen"]
    if seen_names == "rest" or seen_names == ["rest"]:
        seen_names = [t for t in present if t not in unseen_names]
    elif isinstance(seen_names, str):
        seen_names = split_list(seen_names)
    overlap = set(seen_names) & set(unseen_names)
    if overlap:
        raise ExperimentError(f"tasks both seen and unseen: {sorted(overlap)}")
    skipped = [t for t in list(seen_names) + unseen_names if t not in present]
    seen = [Task(t, tasks_dir / t, cfg) for t in seen_names if t in present]
    unseen = [Task(t, tasks_dir / t, cfg) for t in unseen_names if t in present]
    k = cfg["contributors_per_round"]
    if len(seen) < k or not unseen:
        raise ExperimentError(
            f"{tasks_dir}: {len(seen)} seen task(s) {[t.name for t in seen]} and "
            f"{len(unseen)} unseen {[t.name for t in unseen]} found; need at least "
            f"contributors_per_round={k} seen and 1 unseen. Task folders there (each with "
            f"train and test .csv/.tsv/.jsonl): {present or 'none'}. Missing: {skipped}. "
            f"Name yours with --seen=A,B,... (or --seen=rest) and --unseen=C,D,...")
    return seen, unseen, skipped


def prepare_task_data(task: Task, cfg: dict, seeds: list[int], out: Path) -> None:
    """Writes OUT/<task>/test.<ext> (the first max_test_rows rows) and one train file per
    seed: the rows shuffled with the seed, at most max_train_rows, the first rows holding
    one example of each label (so a few-shot probe sees every class) and then the rest in
    shuffled order. Few-shot probes take the first few_shot_examples rows of that file."""
    d = cfg["data"]
    dest = out / task.name
    dest.mkdir(parents=True, exist_ok=True)
    header, rows = read_rows(task.train)
    if not rows:
        raise ExperimentError(f"{task.train}: no rows")
    if task.label_column not in rows[0]:
        raise ExperimentError(f"{task.train}: no column '{task.label_column}' "
                              f"(columns: {list(rows[0])}); set data.tasks.{task.name}.label_column")
    task.labels = sorted({str(r[task.label_column]) for r in rows})
    ext = task.train.suffix
    # The copies are remade when their source or the caps change.
    source = {"train": str(task.train), "test": str(task.test),
              "mtimes": [task.train.stat().st_mtime, task.test.stat().st_mtime],
              "max_train_rows": d["max_train_rows"], "max_test_rows": d["max_test_rows"],
              "label_column": task.label_column}
    stamp = dest / "source.json"
    stale = not stamp.exists() or json.loads(stamp.read_text()) != source
    for seed in seeds:
        path = dest / f"train-s{seed}{ext}"
        if path.exists() and not stale:
            continue
        rng = random.Random(stable_seed("rows", seed, task.name))
        shuffled = rows[:]
        rng.shuffle(shuffled)
        first, rest, have = [], [], set()
        for r in shuffled:
            lab = str(r[task.label_column])
            (rest if lab in have else first).append(r)
            have.add(lab)
        rng.shuffle(first)
        cap = d["max_train_rows"] or len(shuffled)
        write_rows(path, header, (first + rest)[:cap])
    test_path = dest / f"test{task.test.suffix}"
    if not test_path.exists() or stale:
        th, trows = read_rows(task.test)
        cap = d["max_test_rows"] or len(trows)
        write_rows(test_path, th, trows[:cap])
    stamp.write_text(json.dumps(source))
    task.data_dir = dest
    task.test_capped = test_path
    task.train_rows = min(len(rows), d["max_train_rows"] or len(rows))

    def train_for(seed: int, _ext=ext, _dest=dest) -> Path:
        return _dest / f"train-s{seed}{_ext}"
    task.train_for = train_for


def prepare_missing(cfg: dict, model: Path) -> None:
    """--prepare: the MiniLM checkpoint and the named tasks this repo's scripts can fetch."""
    if not (model / "config.json").exists():
        if str(model).endswith("all-MiniLM-L6-v2"):
            log(f"preparing {model} (scripts/prepare_minilm.sh)")
            subprocess.run(["bash", str(REPO / "scripts/prepare_minilm.sh"), str(model)],
                           check=True, stdout=subprocess.DEVNULL)
        else:
            raise ExperimentError(f"--model {model}: no config.json there")
    tasks_dir = resolve_path(cfg["tasks_dir"])
    names = list(cfg["unseen"]) + (list(cfg["seen"]) if isinstance(cfg["seen"], list) else [])
    for t in names:
        if t == "rest" or task_file(tasks_dir / t, "train"):
            continue
        log(f"preparing task {t} into {tasks_dir / t} (scripts/prepare_text_task.sh)")
        r = subprocess.run(["bash", str(REPO / "scripts/prepare_text_task.sh"),
                            str(tasks_dir / t), t], capture_output=True, text=True)
        if r.returncode != 0:
            log(f"  could not prepare {t} (skipped): {r.stderr.strip().splitlines()[-1:]}")


# --------------------------------------------------------------------------------------
# Processes

class Procs:
    """Every child process, so that an error, Ctrl-C or SIGTERM stops them all."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: dict[int, subprocess.Popen] = {}
        self.aborting = threading.Event()

    def start(self, cmd: list[str], log_path: Path, stdout=None) -> subprocess.Popen:
        if self.aborting.is_set():
            raise ExperimentError("aborting")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as err:
            err.write(("$ " + " ".join(cmd) + "\n").encode())
            err.flush()
            # Own session: a terminal's Ctrl-C reaches only this script, which stops the
            # children itself (and waits for them), whatever state they are in.
            p = subprocess.Popen(cmd, stdout=stdout if stdout is not None else err,
                                 stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        with self.lock:
            self.live[p.pid] = p
        return p

    def reap(self, p: subprocess.Popen) -> tuple[int, float]:
        """Waits for p; returns its exit status and CPU seconds (user + system)."""
        try:
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu = ru.ru_utime + ru.ru_stime
        except ChildProcessError:  # reaped by stop_all() while aborting
            cpu = 0.0
            if p.returncode is None:
                p.returncode = -1
        with self.lock:
            self.live.pop(p.pid, None)
        return p.returncode, cpu

    def stop(self, p: subprocess.Popen, grace_s: float = 10) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with self.lock:
            self.live.pop(p.pid, None)

    def stop_all(self) -> None:
        self.aborting.set()
        with self.lock:
            procs = list(self.live.values())
        for p in procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
            except ChildProcessError:
                pass


def find_binaries(bin_dir: Path) -> dict[str, Path]:
    layout = {"coldfused": "server/coldfused", "client": "client/daemon/coldfuse-client",
              "ctl": "ctl/coldfusectl"}
    flat = {"coldfused": "coldfused", "client": "coldfuse-client", "ctl": "coldfusectl"}
    out = {}
    for key in layout:
        for cand in (bin_dir / layout[key], bin_dir / flat[key]):
            if cand.is_file() and os.access(cand, os.X_OK):
                out[key] = cand
                break
        else:
            raise ExperimentError(f"--bin_dir {bin_dir}: no {flat[key]} (looked for "
                                  f"{bin_dir / layout[key]} and {bin_dir / flat[key]}); "
                                  f"build first (make build) or pass --bin_dir")
    return out


def check_flags(bins: dict[str, Path], cfg: dict) -> None:
    """Fails early when a method needs a coldfusectl init flag this build lacks."""
    helptext = subprocess.run([str(bins["ctl"]), "--helpfull"], capture_output=True,
                              text=True).stdout + subprocess.run(
        [str(bins["ctl"]), "--help"], capture_output=True, text=True).stdout
    client_help = subprocess.run([str(bins["client"]), "--helpfull"], capture_output=True,
                                 text=True).stdout
    problems = []
    for m in cfg["methods"]:
        for a in m.get("init_args", []):
            flag = a.split("=", 1)[0].lstrip("-")
            if f"--{flag} " not in helptext and f"--{flag}(" not in helptext \
                    and f"--{flag} (" not in helptext:
                problems.append(f"method '{m['name']}': {bins['ctl']} has no --{flag}")
        fusion = [a.split("=", 1)[1] for a in m.get("init_args", []) if a.startswith("--fusion=")]
        # The --fusion flag's own description names the methods this build knows.
        at = helptext.find("--fusion (")
        known = helptext[at:helptext.find("default:", at)] if at >= 0 else helptext
        for f in fusion:
            if not re.search(rf"\b{re.escape(f)}\b", known):
                # A warning: `init` itself says whether it knows the method.
                log(f"warning: method '{m['name']}': --fusion={f} is not named in "
                    f"{bins['ctl']} --help")
    for a in cfg["train"]["extra_args"] + cfg["eval"]["extra_args"]:
        flag = a.split("=", 1)[0].lstrip("-")
        if f"--{flag} " not in client_help and f"--{flag} (" not in client_help:
            problems.append(f"{bins['client']} has no --{flag}")
    if problems:
        raise ExperimentError(
            "this build cannot run every method of the config:\n  " + "\n  ".join(problems)
            + "\n(build a newer coldfuse, or pick methods with --methods=NAME,...)")


# --------------------------------------------------------------------------------------
# Results: one JSON file, rewritten atomically after each number

class Results:
    def __init__(self, path: Path, meta: dict, fresh: bool):
        self.path = path
        self.lock = threading.Lock()
        self.data = None
        if path.exists() and not fresh:
            old = json.loads(path.read_text())
            if old.get("fingerprint") != meta["fingerprint"]:
                raise ExperimentError(
                    f"{path} holds a run of another configuration (tasks, model, training or "
                    f"evaluation options differ). Pass --fresh to start over (it is moved to "
                    f"{path.name}.old), or --out=OTHER_DIR.")
            self.data = old
            self.data.update({k: v for k, v in meta.items() if k != "started"})
            self.data.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
        elif path.exists():
            path.replace(path.with_name(path.name + ".old"))
        if self.data is None:
            self.data = dict(meta, evaluations=[], rounds=[], runs={}, processes=[])
        self.done = {self.key(e) for e in self.data["evaluations"]}
        self.save()

    @staticmethod
    def key(e: dict) -> tuple:
        return (e["method"], e["seed"], e["round"], e["task"], e["kind"])

    def has(self, method, seed, rnd, task, kind) -> bool:
        with self.lock:
            return (method, seed, rnd, task, kind) in self.done

    def add(self, field: str, record: dict) -> None:
        with self.lock:
            if field == "evaluations":
                self.done.add(self.key(record))
            self.data[field].append(record)
            self._save()

    def set_run(self, run: str, **kv) -> None:
        with self.lock:
            self.data["runs"].setdefault(run, {}).update(kv)
            self._save()

    def drop_run(self, method: str, seed: int) -> None:
        with self.lock:
            for field in ("evaluations", "rounds"):
                self.data[field] = [e for e in self.data[field]
                                    if not (e["method"] == method and e["seed"] == seed)]
            self.done = {self.key(e) for e in self.data["evaluations"]}
            self._save()

    def rounds_done(self, method: str, seed: int) -> set[int]:
        with self.lock:
            return {r["round"] for r in self.data["rounds"]
                    if r["method"] == method and r["seed"] == seed}

    def save(self) -> None:
        with self.lock:
            self._save()

    def _save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


# --------------------------------------------------------------------------------------
# One method x seed: a server, its rounds, its probes

class Run:
    def __init__(self, exp: "Experiment", method: dict, seed: int):
        self.exp = exp
        self.method = method
        self.name = method["name"]
        self.seed = seed
        self.dir = exp.out / "runs" / f"{self.name}-s{seed}"
        self.logs = self.dir / "logs"
        self.server = None
        self.addr = None

    # -- the server
    def start_server(self) -> bool:
        """Starts coldfused on the run's data folder; True when it was already seeded."""
        e = self.exp
        port_file = self.dir / "port"
        port_file.unlink(missing_ok=True)
        k = e.cfg["contributors_per_round"]
        cmd = [str(e.bins["coldfused"]), f"--data_dir={self.dir / 'server'}", "--insecure",
               "--listen=127.0.0.1:0", f"--port_file={port_file}", f"--min_contributions={k}",
               "--round_timeout_s=0"] + list(e.cfg["server_args"])
        self.server = e.procs.start(cmd, self.logs / "coldfused.log")
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            if self.server.poll() is not None:
                break
            time.sleep(0.1)
        if not (port_file.exists() and port_file.read_text().strip()):
            raise ExperimentError(f"{self.name}/s{self.seed}: coldfused did not start "
                                  f"(exit {self.server.poll()}):\n"
                                  f"{tail(self.logs / 'coldfused.log')}")
        self.addr = f"127.0.0.1:{port_file.read_text().strip()}"
        st = self.status()
        return bool(st.get("initialized"))

    def stop_server(self) -> None:
        if self.server is not None:
            self.exp.procs.stop(self.server)
            self.server = None

    def ctl(self, *args, timeout: float = 120) -> str:
        cmd = [str(self.exp.bins["ctl"]), f"--server={self.addr}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise ExperimentError(f"{self.name}/s{self.seed}: {' '.join(cmd)} failed "
                                  f"(exit {r.returncode}):\n{r.stderr.strip()[-3000:]}\n"
                                  f"coldfused log:\n{tail(self.logs / 'coldfused.log', 10)}")
        return r.stdout

    def status(self) -> dict:
        return json.loads(self.ctl("status", "--json"))

    def init(self) -> None:
        e = self.exp
        args = ["init", f"--from={e.model}"]
        if e.cfg["shared_prefix"]:
            args.append(f"--shared_prefix={e.cfg['shared_prefix']}")
        args += list(self.method.get("init_args", []))
        out = self.ctl(*args, timeout=600)
        (self.logs / "init.log").write_text(out)

    # -- client processes, each holding one of the `jobs` slots while it runs
    def client(self, label: str, args: list[str], stdout_json: bool = False) -> dict:
        e = self.exp
        log_path = self.logs / f"{label}.log"
        cmd = [str(e.bins["client"]), f"--server={self.addr}"] + args
        with e.slots:
            if e.procs.aborting.is_set():
                raise ExperimentError("aborting")
            t0 = time.time()
            out_path = self.logs / f"{label}.out"
            if stdout_json:
                with open(out_path, "wb") as out:
                    p = e.procs.start(cmd, log_path, stdout=out)
            else:
                p = e.procs.start(cmd, log_path)
            rc, cpu = e.procs.reap(p)
            wall = time.time() - t0
        if rc != 0:
            if e.procs.aborting.is_set():
                raise ExperimentError("aborting")
            raise e.fail(ExperimentError(
                f"{self.name}/s{self.seed}: {label} failed (exit {rc}); command:\n    "
                f"{' '.join(cmd)}\nlog tail ({log_path}):\n{tail(log_path)}"))
        rec = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        if stdout_json:
            text = out_path.read_text().strip().splitlines()
            try:
                rec["result"] = json.loads(text[-1])
            except (IndexError, json.JSONDecodeError):
                raise ExperimentError(f"{self.name}/s{self.seed}: {label} printed no JSON "
                                      f"({out_path}); log tail:\n{tail(log_path)}")
        return rec

    def common_args(self, task: Task) -> list[str]:
        t = self.exp.cfg["train"]
        a = [f"--model={self.exp.model}", f"--max_seq_length={t['max_seq_length']}",
             f"--batch_size={t['batch_size']}", f"--warmup_ratio={t['warmup_ratio']}",
             f"--threads={t['threads']}", f"--device={t['device']}"]
        return a + task.client_args()

    # -- a round's contributors
    def train_round(self, rnd: int, tasks: list[Task], already: set[str]) -> dict:
        e = self.exp
        t = e.cfg["train"]
        results, errors = {}, []

        def one(task: Task) -> None:
            try:
                args = [f"--name={task.name}", f"--task={task.name}",
                        f"--state_dir={self.dir / 'clients' / task.name}",
                        f"--train={task.train_for(self.seed)}", f"--test={task.test_capped}",
                        f"--steps={t['steps']}", f"--lr={t['lr']}", "--max_rounds=1",
                        "--poll_s=0.2", f"--seed={stable_seed('contrib', self.seed, rnd, task.name)}"]
                results[task.name] = self.client(f"r{rnd}-contrib-{task.name}",
                                                 self.common_args(task) + args + t["extra_args"])
            except Exception as exc:  # noqa: BLE001 - reported by the waiting thread
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(task,), daemon=True)
                   for task in tasks if task.name not in already]
        for th in threads:
            th.start()
        waiter = e.procs.start([str(e.bins["ctl"]), f"--server={self.addr}", "wait",
                                f"--base={rnd}", f"--timeout_s={e.cfg['round_timeout_s']}"],
                               self.logs / f"r{rnd}-wait.log")
        t0 = time.time()
        while True:
            if errors:
                e.procs.stop(waiter)
                raise e.fail(errors[0])
            if self.server.poll() is not None:
                e.procs.stop(waiter)
                raise ExperimentError(f"{self.name}/s{self.seed}: coldfused exited "
                                      f"({self.server.returncode}) in round {rnd}:\n"
                                      f"{tail(self.logs / 'coldfused.log')}")
            rc = waiter.poll()
            if rc is not None:
                with e.procs.lock:
                    e.procs.live.pop(waiter.pid, None)
                if rc != 0:
                    raise ExperimentError(f"{self.name}/s{self.seed}: base v{rnd} did not come "
                                          f"(coldfusectl wait exit {rc}):\n"
                                          f"{tail(self.logs / f'r{rnd}-wait.log')}")
                break
            if e.procs.aborting.is_set():
                e.procs.stop(waiter)
                raise ExperimentError("aborting")
            time.sleep(0.5)
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        round_json = json.loads(self.ctl("round", str(rnd), "--json"))
        return {"processes": results, "round": round_json, "wall_s": round(time.time() - t0, 2)}

    # -- probes of one base
    def probes_for(self, rnd: int) -> list[tuple[Task, str]]:
        e = self.exp
        out = []
        for task in e.unseen:
            out.append((task, "few_shot"))
        for task in e.unseen:
            out.append((task, "full"))
        every = max(1, int(e.cfg["eval"]["seen_every"] or 1))
        if rnd == 0 or rnd == e.cfg["rounds"] or rnd % every == 0:
            for task in e.seen:
                out.append((task, "seen"))
        return out

    def evaluate(self, rnd: int, record_method: str) -> None:
        e = self.exp
        ev = e.cfg["eval"]
        todo = [(task, kind) for task, kind in self.probes_for(rnd)
                if not e.results.has(record_method, self.seed, rnd, task.name, kind)]
        if not todo:
            return

        def one(task: Task, kind: str) -> None:
            if kind == "few_shot":
                examples, steps = ev["few_shot_examples"], ev["few_shot_steps"]
            else:
                examples = ev["full_examples"] or task.train_rows
                steps = ev["seen_steps"] if kind == "seen" else ev["full_steps"]
            lr = ev["lr"] or e.cfg["train"]["lr"]
            args = ["--probe", f"--task={task.name}", f"--base_version={rnd}",
                    f"--train={task.train_for(self.seed)}", f"--test={task.test_capped}",
                    f"--probe_examples={examples}", f"--lr={lr}",
                    f"--seed={stable_seed('probe', self.seed, task.name, kind)}"]
            if steps:
                args.append(f"--steps={steps}")
            elif ev.get("epochs"):
                args.append(f"--epochs={ev['epochs']}")
            rec = self.client(f"r{rnd}-probe-{kind}-{task.name}",
                              self.common_args(task) + args + ev["extra_args"], stdout_json=True)
            res = rec.pop("result")
            metrics = {k: v for k, v in res.items() if k not in ("base_version", "train_examples")}
            e.results.add("evaluations", {
                "method": record_method, "seed": self.seed, "round": rnd, "task": task.name,
                "split": "seen" if kind == "seen" else "unseen", "kind": kind,
                "train_examples": res.get("train_examples"), "steps": steps, **metrics, **rec})
            e.results.add("processes", {"method": record_method, "seed": self.seed,
                                        "round": rnd, "what": f"probe-{kind}", "task": task.name,
                                        "steps": steps, **rec})
            log(f"  {record_method}/s{self.seed} v{rnd} {kind:8s} {task.name}: "
                f"{e.cfg['eval']['metric']} {metrics.get(e.cfg['eval']['metric'], float('nan')):.4f}"
                f" ({rec['wall_s']:.0f} s)")

        with ThreadPoolExecutor(max_workers=max(1, e.cfg["jobs"])) as pool:
            futs = [pool.submit(one, task, kind) for task, kind in todo]
            done, _ = wait(futs, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception():
                    for g in futs:
                        g.cancel()
                    raise f.exception()
            for f in futs:
                f.result()

    # -- the whole run
    def run_base(self) -> None:
        """The original base v0, evaluated once per seed (every method's round 0)."""
        e = self.exp
        if all(e.results.has(BASE_METHOD, self.seed, 0, t.name, k) for t, k in self.probes_for(0)):
            return
        t0 = time.time()
        try:
            if not self.start_server():
                self.init()
            log(f"{BASE_METHOD}/s{self.seed}: evaluating the original base v0")
            self.evaluate(0, BASE_METHOD)
        finally:
            self.stop_server()
        e.results.set_run(f"{BASE_METHOD}/s{self.seed}", status="done",
                          wall_s=round(time.time() - t0, 1))
        if not e.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self) -> None:
        e = self.exp
        R = e.cfg["rounds"]
        run_key = f"{self.name}/s{self.seed}"
        info = e.results.data["runs"].get(run_key, {})
        if info.get("status") == "done" and info.get("rounds", R) >= R:
            return  # (a run of fewer rounds, its server gone, starts over below)
        done_rounds = e.results.rounds_done(self.name, self.seed)
        if done_rounds and not (self.dir / "server").exists():
            log(f"{run_key}: earlier results but no server folder: starting this run over")
            e.results.drop_run(self.name, self.seed)
            done_rounds = set()
        t0 = time.time()
        try:
            seeded = self.start_server()
            if not seeded:
                self.init()
            log(f"{run_key}: coldfused on {self.addr}"
                + (f" (resumed at base v{self.status().get('base_version', 0)})" if seeded else ""))
            for rnd in range(1, R + 1):
                st = self.status()
                have = int(st.get("base_version", 0))
                sampled = e.sample(self.seed, rnd)
                if rnd not in done_rounds:
                    if have < rnd:
                        already = set()
                        open_round = st.get("open_round", {})
                        if int(open_round.get("number", 0)) == rnd:
                            already = {c.get("contributor") or c.get("name")
                                       for c in open_round.get("contributions", [])}
                        log(f"{run_key}: round {rnd}, contributors "
                            f"{', '.join(t.name for t in sampled)}")
                        tr = self.train_round(rnd, sampled, already)
                    else:
                        tr = {"processes": {}, "round": json.loads(
                            self.ctl("round", str(rnd), "--json")), "wall_s": None}
                    for name, rec in tr["processes"].items():
                        e.results.add("processes", {"method": self.name, "seed": self.seed,
                                                    "round": rnd, "what": "contribute",
                                                    "task": name,
                                                    "steps": e.cfg["train"]["steps"], **rec})
                    e.results.add("rounds", {
                        "method": self.name, "seed": self.seed, "round": rnd,
                        "contributors": [t.name for t in sampled],
                        "train_wall_s": tr["wall_s"],
                        "fusion_ms": int(tr["round"].get("fusion_duration_ms", 0) or 0),
                        "contributions": summarize_contributions(tr["round"])})
                self.evaluate(rnd, self.name)
        finally:
            self.stop_server()
        e.results.set_run(run_key, status="done", rounds=R,
                          wall_s=round(time.time() - t0, 1) + info.get("wall_s", 0))
        if not e.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        log(f"{run_key}: done")


def summarize_contributions(round_json: dict) -> list[dict]:
    out = []
    for c in round_json.get("contributions", []):
        rec = {k: c.get(k) for k in ("contributor", "task", "state", "num_examples",
                                     "base_version") if k in c}
        if "metrics" in c:
            rec["metrics"] = c["metrics"]
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------

class Experiment:
    def __init__(self, args, cfg: dict):
        self.args = args
        self.cfg = cfg
        self.out = resolve_path(args.out or f"experiment-run/{cfg['name']}")
        self.model = resolve_path(cfg["model"])
        self.procs = Procs()
        self.slots = threading.BoundedSemaphore(max(1, cfg["jobs"]))
        self.first_error: Exception | None = None
        self.started = False
        self.error_lock = threading.Lock()

    def fail(self, exc: Exception) -> Exception:
        """The first failure stops every process at once (the others then fail with
        'aborting'); it is the one reported."""
        with self.error_lock:
            if self.first_error is None and not self.procs.aborting.is_set():
                self.first_error = exc
        self.procs.stop_all()
        return exc

    def sample(self, seed: int, rnd: int) -> list[Task]:
        """The round's contributors: the same for every method of a seed."""
        rng = random.Random(stable_seed("sample", seed, rnd))
        names = sorted(t.name for t in self.seen)
        picked = rng.sample(names, self.cfg["contributors_per_round"])
        by = {t.name: t for t in self.seen}
        return [by[n] for n in sorted(picked)]

    def fingerprint(self) -> str:
        c = self.cfg
        keyed = {"tasks": [[t.name for t in self.seen], [t.name for t in self.unseen]],
                 "tasks_dir": str(resolve_path(c["tasks_dir"])),
                 "model": str(self.model), "shared_prefix": c["shared_prefix"],
                 "k": c["contributors_per_round"], "data": c["data"], "train": c["train"],
                 "eval": c["eval"], "server_args": c["server_args"]}
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]

    def run(self) -> int:
        cfg = self.cfg
        self.bins = find_binaries(resolve_path(self.args.bin_dir))
        if self.args.prepare:
            prepare_missing(cfg, self.model)
        if not (self.model / "config.json").exists():
            raise ExperimentError(f"model {self.model}: no config.json (a Hugging Face model "
                                  f"folder; --prepare fetches the default MiniLM)")
        self.seen, self.unseen, skipped = find_tasks(cfg, self.args.seen)
        if skipped:
            log(f"tasks not found in {resolve_path(cfg['tasks_dir'])}, left out: "
                f"{', '.join(skipped)}")
        log(f"seen (contributors): {', '.join(t.name for t in self.seen)}; "
            f"unseen: {', '.join(t.name for t in self.unseen)}")
        check_flags(self.bins, cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.args.fresh:  # servers and clients of the old run: nothing to resume
            shutil.rmtree(self.out / "runs", ignore_errors=True)
        data_dir = self.out / "data"
        for t in self.seen + self.unseen:
            prepare_task_data(t, cfg, cfg["seeds"], data_dir)
        meta = {
            "config_file": str(self.args.config), "config": cfg,
            "fingerprint": self.fingerprint(),
            "command": " ".join(["scripts/experiment.py"] + sys.argv[1:]),
            "invoked_as": os.environ.get("EXPERIMENT_INVOKED_AS", ""),
            "seen": [t.name for t in self.seen], "unseen": [t.name for t in self.unseen],
            "skipped_tasks": skipped, "model": str(self.model),
            "binaries": {k: str(v) for k, v in self.bins.items()},
            "machine": machine_info(),
            "samples": {str(s): {str(r): [t.name for t in self.sample(s, r)]
                                 for r in range(1, cfg["rounds"] + 1)} for s in cfg["seeds"]},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.results = Results(self.out / "results.json", meta, self.args.fresh)
        self.started = True
        # Seed-major order: an interrupted run has whole seeds of every method.
        jobs = []
        for seed in cfg["seeds"]:
            jobs.append(Run(self, {"name": BASE_METHOD}, seed).run_base)
            for m in cfg["methods"]:
                jobs.append(Run(self, m, seed).run)
        t0 = time.time()
        # Not a `with` block: on an error or Ctrl-C the children are stopped first, and
        # only then are the worker threads (waiting on them) joined.
        pool = ThreadPoolExecutor(max_workers=max(1, cfg["parallel_runs"]))
        futs = [pool.submit(j) for j in jobs]
        try:
            done, _ = wait(futs, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception()]
            if failed:
                self.procs.stop_all()
                raise self.first_error or failed[0].exception()
        finally:
            if any(not f.done() or f.exception() for f in futs):
                self.procs.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
        wall = time.time() - t0
        with self.results.lock:
            self.results.data.setdefault("wall_s", []).append(round(wall, 1))
            self.results.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.results._save()
        log(f"all runs done in {wall / 60:.1f} min; results in {self.results.path}")
        return 0


def machine_info() -> dict:
    info = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (OSError, ValueError):
        pass
    return info


def estimate(cfg: dict, n_seen: int, n_unseen: int) -> dict:
    """Time of a configuration from a linear cost model: every client process costs
    process_s (start, tokenising, pulling the base, scoring the test rows before and
    after) plus steps x step_s, on one of `jobs` lanes; each round adds round_s."""
    cm, ev, tr = cfg["cost_model"], cfg["eval"], cfg["train"]
    R, K, S = cfg["rounds"], cfg["contributors_per_round"], len(cfg["seeds"])
    M = len(cfg["methods"])

    def proc(steps):
        return cm["process_s"] + steps * cm["step_s"]
    every = max(1, int(ev["seen_every"] or 1))
    seen_rounds = len({r for r in range(1, R + 1) if r % every == 0 or r == R})
    unseen_point = n_unseen * (proc(ev["few_shot_steps"]) + proc(ev["full_steps"]))
    seen_point = n_seen * proc(ev["seen_steps"])
    per_run = R * K * proc(tr["steps"]) + R * unseen_point + seen_rounds * seen_point
    base = unseen_point + seen_point
    lane_s = S * (M * per_run + base)
    jobs = max(1, cfg["jobs"])
    wall = lane_s / jobs + S * M * R * cm["round_s"]
    return {"lane_s": round(lane_s), "wall_s": round(wall), "wall_min": round(wall / 60, 1),
            "processes": S * (M * (R * K + R * 2 * n_unseen + seen_rounds * n_seen)
                              + 2 * n_unseen + n_seen),
            "per_run_lane_s": round(per_run), "base_lane_s": round(base)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See docs/experiments.md.")
    ap.add_argument("config", help="experiment JSON (experiments/cpu.json, gpu.json, smoke.json)")
    ap.add_argument("--bin_dir", default="build",
                    help="build folder (server/coldfused, client/daemon/coldfuse-client, "
                         "ctl/coldfusectl) or a folder holding the three binaries")
    ap.add_argument("--out", help="results folder (default experiment-run/CONFIG_NAME)")
    ap.add_argument("--tasks_dir", help="folder of task folders (each: train, test, optional "
                                        "dev as .csv/.tsv/.jsonl); overrides the config")
    ap.add_argument("--seen", help="comma-separated contributor tasks, or 'rest' (every "
                                   "task folder not in --unseen)")
    ap.add_argument("--unseen", help="comma-separated tasks no contributor trains on")
    ap.add_argument("--model", help="Hugging Face model folder of the base (overrides config)")
    ap.add_argument("--shared_prefix", help="tensors shared and fused (coldfusectl init "
                                            "--shared_prefix); '' for every float tensor")
    ap.add_argument("--methods", help="run only these methods of the config (comma-separated)")
    ap.add_argument("--seeds", help="comma-separated seeds (overrides config)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--contributors", type=int, help="contributors per round")
    ap.add_argument("--jobs", type=int, help="client processes at once")
    ap.add_argument("--parallel_runs", type=int, help="method x seed runs at once")
    ap.add_argument("--device", help="cpu, cuda or auto (overrides train.device)")
    ap.add_argument("--prepare", action="store_true",
                    help="fetch the default MiniLM and the named tasks that are missing "
                         "(scripts/prepare_minilm.sh, scripts/prepare_text_task.sh)")
    ap.add_argument("--fresh", action="store_true", help="start over (the old results.json "
                                                         "is kept as results.json.old)")
    ap.add_argument("--keep", action="store_true", help="keep server and client folders")
    ap.add_argument("--no_report", action="store_true", help="skip experiment_report.py")
    ap.add_argument("--estimate", action="store_true",
                    help="print the configuration's estimated time (from its cost_model) "
                         "and exit")
    ap.add_argument("--calibrate", metavar="RESULTS_JSON",
                    help="with --estimate: also estimate from the process times of an earlier "
                         "run (as measured, and from CPU time: an idle machine)")
    args = ap.parse_args()

    try:
        cfg = load_config(args)
        if args.estimate:
            try:
                seen, unseen, skipped = find_tasks(cfg, args.seen)
                ns, nu = len(seen), len(unseen)
            except ExperimentError:
                ns = len(cfg["seen"]) if isinstance(cfg["seen"], list) else 0
                nu = len(cfg["unseen"])
            out = {"config": dict(estimate(cfg, ns, nu), cost_model=cfg["cost_model"]),
                   "seen": ns, "unseen": nu}
            if args.calibrate:
                sys.path.insert(0, str(REPO / "scripts"))
                from experiment_report import calibrate
                res = json.loads(Path(args.calibrate).read_text())
                for field, label in (("wall_s", "as_measured"), ("cpu_s", "idle_machine")):
                    cal = calibrate(res, field)
                    if cal:
                        c2 = copy.deepcopy(cfg)
                        c2["cost_model"].update(step_s=cal["step_s"], process_s=cal["process_s"])
                        out[label] = dict(estimate(c2, ns, nu), cost_model=c2["cost_model"])
            print(json.dumps(out, indent=1))
            return 0
        exp = Experiment(args, cfg)
    except ExperimentError as e:
        print(f"experiment: {e}", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        exp.procs.stop_all()
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        rc = exp.run()
    except KeyboardInterrupt:
        print("experiment: interrupted; every process stopped. Run the same command again "
              "to resume.", file=sys.stderr)
        exp.procs.stop_all()
        return 130
    except ExperimentError as e:
        exp.procs.stop_all()
        print(f"experiment: FAILED: {e}", file=sys.stderr)
        if exp.started:
            print("experiment: every process stopped; results so far are kept (run the same "
                  "command again to resume).", file=sys.stderr)
        return 1
    except BaseException:
        exp.procs.stop_all()
        raise
    finally:
        exp.procs.stop_all()
    if rc == 0 and not args.no_report:
        cmd = [sys.executable, str(REPO / "scripts/experiment_report.py"),
               str(exp.out / "results.json")]
        log("report: " + " ".join(cmd))
        rc = subprocess.run(cmd).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
