#!/usr/bin/env python3
"""The web dashboard, as a person sees it in a real browser (issue 9, item 3).

Everything is real: a coldfused with TLS and tokens (certificates from
deploy/make-certs.sh), tokens made with coldfusectl, two coldfuse-client daemons that
fine-tune with LibTorch through several fused rounds, evaluation scores measured with
`coldfuse-client --probe` on bases v0..vN for a task the contributors train on (seen)
and one nobody trains on (unseen), and headless Chromium (Debian's chromium,
chromium-driver and python3-selenium) on the server's HTTPS listener at 1280x800.

The browser test then checks what a person would see:
  - a wrong token and a contributor's token are refused with a clear message, and the
    user can try again; the viewer token is accepted;
  - the model (its fusion method and outer optimizer, Nesterov with its options), the
    base version and its SHA-256 match /api/v1/status; the open round's
    progress reads "N / 2"; the base history lists each fused round with its
    contributors; each contributor's last contribution is listed;
  - the chart (read from the Chart.js instance) has one line per (task, metric, k) with
    exactly the recorded points, the unseen task dashed and labelled "unseen";
  - new contributions and evaluations appear without a reload;
  - a stale contribution (pushed with `coldfusectl push --version=OLDER`) is marked with
    its staleness and weight, and the asynchronous-contribution policy is shown;
  - the token is in sessionStorage only: never in the URL, localStorage or a cookie;
  - no Content-Security-Policy violation or script error in the console, and the page
    fits 1280 px without horizontal scrolling.

Usage (tests/CMakeLists.txt registers it with ctest):
  dashboard_test.py --coldfused BIN --coldfusectl BIN --client BIN --make_certs SCRIPT
                    [--screenshot PNG] [--dashboard_dir DIR] [--keep]
--screenshot saves the page (full height, 1280 px wide) once it shows several rounds and
evaluations over several bases (docs/dashboard.png is made this way). --dashboard_dir
serves the page from a source folder instead of the copy compiled in (development).

Scores are measured and recorded the way an evaluator does it: `coldfuse-client --probe
--task=T` with an evaluator token records each metric it prints (accuracy, macro_f1) for
(base version, task, metric, k) on the server.
"""

import argparse
import base64
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MIN_CONTRIBUTIONS = 2
FEATURES = 6
SPEC = f"mlp:{FEATURES},16,8"
SEEN_TASK = "sensor-a"  # alice trains on it; bob on sensor-b
UNSEEN_TASK = "sensor-c"  # nobody trains on it: only probed
PROBE_K = 40
# Enough training that fused bases differ visibly, little enough to stay fast.
CONTRIBUTOR_FLAGS = ["--epochs=8", "--lr=0.01"]
PROBE_FLAGS = ["--epochs=10", "--lr=0.01"]
WAIT_S = 30  # every browser wait is bounded by this


class TestFailure(AssertionError):
    pass


def check(cond, message):
    if not cond:
        raise TestFailure(message)


def check_eq(actual, expected, what):
    if actual != expected:
        raise TestFailure(f"{what}: expected {expected!r}, got {actual!r}")


def log(msg):
    print(f"[dashboard_test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(what, predicate, timeout_s=WAIT_S, interval_s=0.1):
    """Polls `predicate` until it returns something truthy (returned) or time runs out."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except TestFailure:
            raise
        except Exception as e:  # noqa: BLE001 - reported if it never succeeds
            last_error = e
        if time.monotonic() >= deadline:
            raise TestFailure(f"timed out after {timeout_s} s waiting for {what}"
                              + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval_s)


# ----------------------------------------------------------------------------- data

def write_task(folder, rule, seed, rows_train=300, rows_test=200):
    """A CSV classification task over FEATURES shared features; `rule` gives the label."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    for name, rows in (("train.csv", rows_train), ("test.csv", rows_test)):
        with open(os.path.join(folder, name), "w") as f:
            f.write(",".join(f"x{i}" for i in range(FEATURES)) + ",label\n")
            for _ in range(rows):
                x = [rng.gauss(0, 1) for _ in range(FEATURES)]
                f.write(",".join(f"{v:.5f}" for v in x) + f",{rule(x)}\n")
    return folder


RULES = {
    # Three related tasks: all depend on the same few directions of the input, so a
    # body fused from two of them is a better start for the third.
    "sensor-a": lambda x: int(x[0] + x[1] > 0) + int(x[2] > 0.5),
    "sensor-b": lambda x: int(x[0] - x[2] > 0) + int(x[1] > 0.5),
    "sensor-c": lambda x: int(x[0] + x[1] > 0) + int(x[0] - x[2] > 0),
}


# ----------------------------------------------------------------------------- the scenario

class Scenario:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="dashboard_test.")
        self.procs = []
        self.driver = None
        self.printed = {}  # (task, metric, k) -> {base_version: score the probe printed}

    # -- processes

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def start(self, argv, log_name):
        logf = open(self.path("logs", log_name), "w")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        p.log_name = log_name
        self.procs.append(p)
        return p

    def run(self, argv, what, timeout_s=120):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise TestFailure(f"{what} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def ctl(self, *argv, token="operator"):
        return self.run([self.args.coldfusectl, f"--server={self.address}",
                         f"--tls_ca={self.ca}", f"--token_file={self.token_file(token)}",
                         *argv], "coldfusectl " + " ".join(argv))

    def token_file(self, name):
        return self.path("tokens", f"{name}.token")

    def token(self, name):
        with open(self.token_file(name)) as f:
            return f.read().strip()

    def client_argv(self, name, task):
        data = self.path("data", task)
        return [self.args.client, f"--server={self.address}", f"--tls_ca={self.ca}",
                f"--token_file={self.token_file(name)}", f"--name={name}", f"--task={task}",
                f"--state_dir={self.path('clients', name)}",
                f"--train={data}/train.csv", f"--test={data}/test.csv",
                "--threads=1", "--poll_s=0.1", *CONTRIBUTOR_FLAGS]

    def contribute(self, name, task, rounds):
        """Runs `name`'s daemon until it has contributed to `rounds` more rounds."""
        return self.start(self.client_argv(name, task) + [f"--max_rounds={rounds}"],
                          f"client-{name}-{time.monotonic_ns()}.log")

    def wait_exit(self, p, timeout_s=180):
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TestFailure(f"{p.log_name} still running after {timeout_s} s")
        check(rc == 0, f"{p.log_name} exited {rc}:\n" + self.tail(p.log_name))

    def tail(self, log_name, lines=30):
        try:
            with open(self.path("logs", log_name)) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self):
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:  # noqa: BLE001
                pass
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- set-up: server, tokens, rounds, evaluations

    def start_server(self):
        for d in ("logs", "tokens", "clients", "data"):
            os.makedirs(self.path(d))
        self.run(["bash", self.args.make_certs, self.path("certs")], "make-certs.sh")
        self.ca = self.path("certs", "ca.crt")
        argv = [self.args.coldfused, f"--data_dir={self.path('server-data')}",
                "--listen=127.0.0.1:0", f"--port_file={self.path('port')}",
                "--http_listen=127.0.0.1:0", f"--http_port_file={self.path('http_port')}",
                f"--tls_cert={self.path('certs', 'server.crt')}",
                f"--tls_key={self.path('certs', 'server.key')}",
                f"--bootstrap_token_file={self.token_file('operator')}",
                f"--min_contributions={MIN_CONTRIBUTIONS}", "--round_timeout_s=3600"]
        if self.args.dashboard_dir:
            argv.append(f"--dashboard_dir={self.args.dashboard_dir}")
        self.server = self.start(argv, "coldfused.log")

        def ports():
            check(self.server.poll() is None,
                  "coldfused exited:\n" + self.tail("coldfused.log"))
            try:
                with open(self.path("port")) as f, open(self.path("http_port")) as g:
                    return int(f.read().strip()), int(g.read().strip())
            except (OSError, ValueError):
                return None
        grpc_port, http_port = wait_for("coldfused's port files", ports)
        self.address = f"127.0.0.1:{grpc_port}"
        self.url = f"https://127.0.0.1:{http_port}"
        self.tls = ssl.create_default_context(cafile=self.ca)
        log(f"coldfused: gRPC {self.address}, dashboard {self.url}/")

    def api(self, path, token="vera"):
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.token(token)}"})
        with urllib.request.urlopen(req, context=self.tls, timeout=10) as r:
            return json.load(r)

    def set_up_model(self):
        # DiLoCo's outer step, so the model card shows an outer optimizer with its options.
        self.ctl("init", f"--spec={SPEC}", "--seed=1", "--fusion=mean",
                 "--outer_optimizer=nesterov", "--outer_lr=0.7", "--outer_momentum=0.9")
        for name, role in (("vera", "viewer"), ("alice", "contributor"),
                           ("bob", "contributor"), ("eve", "evaluator")):
            self.ctl("token", "create", f"--name={name}", f"--role={role}",
                     f"--out={self.token_file(name)}")
        for i, (task, rule) in enumerate(sorted(RULES.items())):
            write_task(self.path("data", task), rule, seed=100 + i)

    def run_rounds(self, n):
        """alice and bob each contribute to the next `n` rounds; waits for the bases."""
        base = int(self.api("/api/v1/status")["base_version"])
        procs = [self.contribute("alice", SEEN_TASK, n), self.contribute("bob", "sensor-b", n)]
        self.ctl("wait", f"--base={base + n}", "--timeout_s=180")
        for p in procs:
            self.wait_exit(p)
        return base + n

    def probe(self, base_version, task):
        """Scores base vN on `task` with coldfuse-client --probe, which records the scores
        on the server (an evaluator's token); returns what it printed."""
        data = self.path("data", task)
        out = self.run([self.args.client, "--probe", f"--server={self.address}",
                        f"--tls_ca={self.ca}", f"--token_file={self.token_file('eve')}",
                        f"--base_version={base_version}", f"--probe_examples={PROBE_K}",
                        f"--task={task}", f"--train={data}/train.csv", f"--test={data}/test.csv",
                        "--threads=1", *PROBE_FLAGS], f"probe v{base_version} {task}")
        line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
        result = json.loads(line)
        check_eq(result["base_version"], base_version, "probed base version")
        check_eq(result["train_examples"], PROBE_K, "probe's training examples")
        metrics = {k: v for k, v in result.items() if k not in ("base_version", "train_examples")}
        check("accuracy" in metrics, f"the probe printed no accuracy: {line}")
        for metric, value in metrics.items():
            self.printed.setdefault((task, metric, PROBE_K), {})[base_version] = value
        return result

    def probe_bases(self, versions):
        for v in versions:
            for task in (SEEN_TASK, UNSEEN_TASK):
                self.probe(v, task)

    # -- the browser

    def open_browser(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                  "--disable-gpu", "--window-size=1280,800", "--hide-scrollbars",
                  "--force-device-scale-factor=1", "--lang=en-US",
                  # The browser's trust store is not under test; the CA is.
                  "--ignore-certificate-errors",
                  f"--user-data-dir={self.path('chromium-profile')}"):
            options.add_argument(a)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service("/usr/bin/chromedriver", log_path=self.path("logs", "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_window_size(1280, 800)
        self.driver.set_page_load_timeout(WAIT_S)
        self.driver.set_script_timeout(WAIT_S)

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def text(self, element_id):
        return self.js("const e = document.getElementById(arguments[0]);"
                       "return e ? e.textContent.trim() : null;", element_id)

    def visible(self, element_id):
        return self.js("const e = document.getElementById(arguments[0]);"
                       "return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;",
                       element_id)

    def wait_text(self, element_id, expected):
        try:
            return wait_for(f"#{element_id} to read {expected!r}",
                            lambda: self.text(element_id) == expected)
        except TestFailure as e:
            raise TestFailure(f"{e}; it reads {self.text(element_id)!r}") from None

    def sign_in(self, token):
        from selenium.webdriver.common.by import By
        wait_for("the sign-in form", lambda: self.visible("token-input"))
        field = self.driver.find_element(By.ID, "token-input")
        field.clear()
        field.send_keys(token)
        self.driver.find_element(By.ID, "login-submit").click()

    def session_token(self):
        return self.js("return sessionStorage.getItem('coldfuse.viewer_token');")

    def chart_lines(self):
        return self.js("""
          const c = window.Chart && Chart.getChart('chart');
          if (!c) return null;
          return c.data.datasets.map(d => ({
            label: d.label, task: d.task, metric: d.metric, k: d.numTrainExamples,
            seen: d.seen, dashed: (d.borderDash || []).length > 0,
            points: d.data.map(p => [p.x, p.y])}));""")

    def recorded_lines(self):
        """What the server stored, as {(task, metric, k): [(base, value), ...]}; it must be
        what the probes printed (they print 6 decimals)."""
        lines, seen = {}, {}
        for e in self.api("/api/v1/evaluations")["evaluations"]:
            key = (e["task"], e["metric"], int(e["num_train_examples"]))
            lines.setdefault(key, {})[int(e["base_version"])] = e["value"]
            check_eq(e["evaluator"], "eve", "evaluator of a stored score")
            seen.setdefault(e["task"], {})[int(e["base_version"])] = e["task_seen"]
        check_eq(sorted(lines), sorted(self.printed), "(task, metric, k) the server stored")
        for key, points in lines.items():
            check_eq(sorted(points), sorted(self.printed[key]), f"base versions of {key}")
            for v, value in points.items():
                check(abs(value - self.printed[key][v]) < 1e-6,
                      f"{key} at v{v}: stored {value}, the probe printed {self.printed[key][v]}")
        # The server's view of seen/unseen: the contributors' task is seen once a
        # contribution on it was fused (v1 on), the probe-only task never.
        for v, was_seen in seen[SEEN_TASK].items():
            check_eq(was_seen, v >= 1, f"task_seen of {SEEN_TASK} at v{v}")
        check(not any(seen[UNSEEN_TASK].values()), f"{UNSEEN_TASK} is seen: {seen}")
        return {key: sorted(points.items()) for key, points in lines.items()}

    def check_chart(self):
        """The chart shows exactly the scores the server stored."""
        expected = self.recorded_lines()

        def matches():
            lines = self.chart_lines()
            if lines is None or len(lines) != len(expected):
                return False
            got = {(l["task"], l["metric"], l["k"]): [tuple(p) for p in l["points"]]
                   for l in lines}
            return got == {k: [tuple(p) for p in v] for k, v in expected.items()}
        try:
            wait_for("the chart to show the recorded scores", matches)
        except TestFailure as e:
            raise TestFailure(f"{e}\nchart: {self.chart_lines()}\nrecorded: {expected}") from None
        for line in self.chart_lines():
            if line["task"] == SEEN_TASK:
                check(line["seen"] and not line["dashed"] and "unseen" not in line["label"],
                      f"a seen task's line should be solid and not say unseen: {line}")
            else:
                check(not line["seen"] and line["dashed"] and "(unseen)" in line["label"],
                      f"an unseen task's line should be dashed and say unseen: {line}")
        # The table of latest scores agrees.
        rows = self.js("""return [...document.querySelectorAll('#latest-scores tbody tr')]
            .map(tr => [...tr.cells].map(td => td.textContent.trim()));""")
        check_eq(len(rows), len(expected), "rows in the latest-scores table")
        for (task, metric, k), points in expected.items():
            v, value = points[-1]
            row = [r for r in rows if r[0].startswith(task) and r[1] == metric]
            check(len(row) == 1, f"no latest-score row for {task} {metric}: {rows}")
            check_eq(row[0][2:5], [str(k), f"v{v}", f"{value:.4f}"],
                     f"latest-score row of {task} {metric}")
            check_eq("unseen" in row[0][0], task == UNSEEN_TASK, f"unseen mark of {task}")

    def check_matches_status(self):
        """The cards say what /api/v1/status says."""
        s = self.api("/api/v1/status")
        self.wait_text("base-version", f"v{s['base_version']}")
        self.wait_text("change-seq", s["change_seq"])
        check_eq(self.text("model-spec"), SPEC, "model spec")
        check_eq(self.text("fusion-method"), "mean + Nesterov (lr 0.7, momentum 0.9)",
                 "fusion method and outer optimizer")
        check_eq(self.js("return document.getElementById('fusion-method').title;"),
                 f"{s['model']['fusion_method']}, {s['model']['outer_optimizer']}",
                 "their API names (title)")
        check_eq(s["model"]["outer_optimizer"], "OUTER_NESTEROV", "the API's outer optimizer")
        check_eq(self.text("transport"), "TLS and tokens", "transport")
        sha = base64.b64decode(s["base_sha256"]).hex()
        check_eq(self.js("return document.getElementById('base-sha').title;"), sha,
                 "the base's full SHA-256 (title)")
        check(self.text("base-sha") == sha[:16] + "…", f"short SHA-256: {self.text('base-sha')}")
        r = s["open_round"]
        check_eq(self.text("round-number"), r["number"], "open round number")
        check_eq(self.text("round-progress"),
                 f"{len(r['contributions'])} / {MIN_CONTRIBUTIONS}", "round progress")
        check_eq(self.js("const b = document.getElementById('round-progress-bar');"
                         "return [b.value, b.max];"),
                 [len(r["contributions"]), MIN_CONTRIBUTIONS], "progress bar value/max")
        check("(in " in self.text("round-deadline"), f"deadline: {self.text('round-deadline')}")
        chips = self.js("""return [...document.querySelectorAll('#round-contributors li')]
            .map(li => li.dataset.contributor).filter(Boolean);""")
        check_eq(sorted(chips), sorted(c["contributor"] for c in r["contributions"]),
                 "contributors of the open round")
        return s

    def check_history(self, fused_rounds):
        rows = self.js("""return [...document.querySelectorAll('#history tbody tr')].map(tr => ({
            round: tr.dataset.round, base: tr.dataset.resultBase,
            reason: tr.cells[2].textContent.trim(),
            who: [...tr.querySelectorAll('[data-contributor]')].map(e => e.dataset.contributor)
          }));""")
        check_eq([r["round"] for r in rows], [str(n) for n in range(fused_rounds, 0, -1)],
                 "rounds in the base history (newest first)")
        for r in rows:
            check_eq(r["base"], r["round"], f"base made by round {r['round']}")
            check_eq(r["reason"], "quorum", f"close reason of round {r['round']}")
            check_eq(sorted(r["who"]), ["alice", "bob"], f"contributors of round {r['round']}")
        contributors = self.js("""return [...document.querySelectorAll('#contributors tbody tr')]
            .map(tr => [...tr.cells].map(td => td.textContent.trim()));""")
        check_eq([c[0] for c in contributors], ["alice", "bob"], "contributors table")
        check_eq([c[2] for c in contributors], [SEEN_TASK, "sensor-b"], "contributors' tasks")
        for c in contributors:
            check("accuracy" in c[4] and "→" in c[4], f"metrics of {c[0]}: {c[4]}")
            check_eq(c[5], "accepted", f"state of {c[0]}'s last contribution")
        return contributors

    def check_console(self):
        """No CSP violation, no script error (401/403 of refused tokens are expected)."""
        problems = []
        for entry in self.driver.get_log("browser"):
            msg = entry.get("message", "")
            if entry.get("level") != "SEVERE" and "Content Security Policy" not in msg:
                continue
            if "status of 401" in msg or "status of 403" in msg:
                continue
            problems.append(msg)
        check(not problems, "browser console:\n" + "\n".join(problems))

    def screenshot(self, path):
        """The whole page at 1280 px wide (a taller viewport while it is taken)."""
        height = max(800, self.js("return document.documentElement.scrollHeight;"))
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
        try:
            # Chart.js redraws on resize; wait until the canvas has the new layout.
            time.sleep(0.5)
            self.driver.save_screenshot(path)
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        log(f"screenshot: {path} (1280x{height})")

    # -- the test

    def run_all(self):
        self.start_server()
        self.set_up_model()
        t0 = time.monotonic()
        self.run_rounds(3)
        log(f"3 rounds fused in {time.monotonic() - t0:.1f} s")
        t0 = time.monotonic()
        self.probe_bases(range(0, 4))
        log(f"8 probes (recorded on the server) in {time.monotonic() - t0:.1f} s")

        self.open_browser()
        self.driver.get(self.url + "/")
        check_eq(self.driver.title, "coldfuse dashboard", "page title")

        # A wrong token is refused, and the form stays for another try.
        self.sign_in("cf_" + "0" * 64)
        wait_for("the refusal of a wrong token", lambda: self.visible("login-error"))
        msg = self.text("login-error")
        check("UNAUTHENTICATED" in msg and "not accept" in msg, f"refusal message: {msg!r}")
        check(not self.visible("dashboard"), "the dashboard shows after a wrong token")
        check_eq(self.session_token(), None, "token kept after a refusal")
        # A contributor's token is not a viewer's: refused too (403).
        self.sign_in(self.token("alice"))
        wait_for("the refusal of a contributor token",
                 lambda: "PERMISSION_DENIED" in (self.text("login-error") or ""))
        check(not self.visible("dashboard"), "the dashboard shows for a contributor token")

        # The viewer token.
        self.sign_in(self.token("vera"))
        wait_for("the dashboard", lambda: self.visible("dashboard"))
        check(not self.visible("login"), "the sign-in form still shows")
        check(not self.visible("login-error"), "the refusal still shows")
        self.check_matches_status()
        self.wait_text("round-progress", f"0 / {MIN_CONTRIBUTIONS}")
        self.check_history(3)
        self.check_chart()

        # The token: in this tab's sessionStorage only.
        check_eq(self.driver.current_url, self.url + "/", "URL after signing in")
        check_eq(self.session_token(), self.token("vera"), "token in sessionStorage")
        check_eq(self.js("return localStorage.length;"), 0, "localStorage entries")
        check_eq(self.driver.get_cookies(), [], "cookies")
        check_eq(self.js("return document.documentElement.scrollWidth;"), 1280,
                 "page width at 1280x800 (no horizontal scrolling)")

        # Live: new contributions and scores appear without a reload.
        self.js("window.__not_reloaded = true;")
        self.wait_exit(self.contribute("alice", SEEN_TASK, 1))
        self.wait_text("round-progress", f"1 / {MIN_CONTRIBUTIONS}")
        wait_for("alice in the open round", lambda: self.js(
            "return !!document.querySelector('#round-contributors [data-contributor=\"alice\"]');"))
        self.check_matches_status()
        self.wait_exit(self.contribute("bob", "sensor-b", 1))
        self.ctl("wait", "--base=4", "--timeout_s=60")
        self.wait_text("base-version", "v4")
        self.wait_text("round-progress", f"0 / {MIN_CONTRIBUTIONS}")
        self.check_matches_status()
        self.check_history(4)
        self.probe_bases([4])
        self.check_chart()
        # One more contribution, so the open round has someone in it (and the screenshot
        # shows a round in progress).
        self.wait_exit(self.contribute("alice", SEEN_TASK, 1))
        self.wait_text("round-progress", f"1 / {MIN_CONTRIBUTIONS}")
        contributors = self.check_history(4)
        check_eq(contributors[0][1], "5 (open)", "alice's last contribution is in round 5")
        check_eq(self.text("staleness-policy"), "up to 4 fusions old, weight (1 + s)^−0.5",
                 "the asynchronous-contribution policy")

        # Bob sends work fine-tuned from base v3 (here: v3 itself, exported) while round 5
        # takes base v4: it is fused as a stale contribution, and the page says so.
        self.ctl("export", "--version=3", f"--out={self.path('v3')}", token="bob")
        self.ctl("push", f"--checkpoint={self.path('v3', 'model.safetensors')}", "--version=3",
                 "--num_examples=10", "--task=sensor-b",
                 "--metrics=accuracy_before=0.5,accuracy_after=0.75", token="bob")
        self.ctl("wait", "--base=5", "--timeout_s=60")
        self.wait_text("base-version", "v5")
        self.check_history(5)
        stale = self.js("""return [...document.querySelectorAll(
            '#history tbody tr[data-round="5"] [data-contributor]')]
            .map(e => [e.dataset.contributor, e.dataset.staleness, e.textContent, e.title]);""")
        by_name = {who: (st, text, title) for who, st, text, title in stale}
        check_eq(by_name["alice"][0], "0", "alice's staleness in round 5")
        check_eq(by_name["bob"][0], "1", "bob's staleness in round 5")
        check("stale 1 (×0.71)" in by_name["bob"][1], f"bob's chip: {by_name['bob'][1]!r}")
        check("trained from base v3" in by_name["bob"][2], f"bob's chip title: {by_name['bob'][2]!r}")
        rows = self.js("""return [...document.querySelectorAll('#contributors tbody tr')]
            .map(tr => [tr.dataset.contributor, tr.cells[1].textContent.trim()]);""")
        check_eq(dict(rows)["bob"], "5stale 1 (×0.71)", "bob's last contribution (round cell)")
        # Alice again, so the open round has someone in it (and the screenshot shows it).
        self.wait_exit(self.contribute("alice", SEEN_TASK, 1))
        self.wait_text("round-progress", f"1 / {MIN_CONTRIBUTIONS}")
        check(self.js("return window.__not_reloaded === true;"), "the page was reloaded")
        check_eq(self.driver.current_url, self.url + "/", "URL")
        self.check_console()

        if self.args.screenshot:
            self.screenshot(self.args.screenshot)

        # Signing out forgets the token.
        self.js("document.getElementById('sign-out').click();")
        wait_for("the sign-in form after signing out", lambda: self.visible("token-input"))
        check_eq(self.session_token(), None, "token after signing out")
        check(not self.visible("dashboard"), "the dashboard shows after signing out")
        # A reload stays signed out; signing in again works.
        self.driver.refresh()
        wait_for("the sign-in form after a reload", lambda: self.visible("token-input"))
        self.sign_in(self.token("vera"))
        self.wait_text("base-version", "v5")
        self.check_console()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--coldfused", required=True)
    p.add_argument("--coldfusectl", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--make_certs", required=True)
    p.add_argument("--screenshot", help="save a PNG of the dashboard here")
    p.add_argument("--dashboard_dir", help="serve the page from this folder (development)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = p.parse_args()
    scenario = Scenario(args)
    t0 = time.monotonic()
    try:
        scenario.run_all()
    except Exception:  # noqa: BLE001 - print it with the server's log, then fail
        traceback.print_exc()
        print("---- coldfused log (tail) ----\n" + scenario.tail("coldfused.log", 40))
        scenario.args.keep = scenario.args.keep or bool(os.environ.get("KEEP_ON_FAILURE"))
        scenario.cleanup()
        print("dashboard_test: FAILED")
        return 1
    scenario.cleanup()
    print(f"dashboard_test: PASSED in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
