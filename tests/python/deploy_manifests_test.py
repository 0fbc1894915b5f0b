#!/usr/bin/env python3
"""The container, Compose and Kubernetes configuration agrees with the programs.

What a user would otherwise find out from a crash loop, a failing probe or an empty
Prometheus (docs/containers.md):
  - every flag in the images' and manifests' flag files and command lines is one the
    real coldfused / coldfuse-client accepts;
  - ports, probe paths and schemes, scrape annotations, the Services, the Dockerfile's
    EXPOSE and Prometheus's target agree with --listen and --http_listen;
  - the files the flags name are where the manifests mount them (the data on the
    writable volume, TLS files in the Secret under the names the guide creates);
  - the real coldfused, started with deploy/kubernetes/coldfused.flags and with the
    image's deploy/container/coldfused.flags (paths moved into a temp folder, loopback
    ports), answers the probes the StatefulSet declares, serves /metrics the way the
    scrape annotations (no token) and the Compose Prometheus (viewer token) expect, and
    serves coldfusectl over mutual TLS with the bootstrap token.

Usage: deploy_manifests_test.py SOURCE_DIR COLDFUSED COLDFUSE_CLIENT COLDFUSECTL
(tests/CMakeLists.txt registers it with ctest). Needs python3-yaml.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import yaml

SOURCE, COLDFUSED, CLIENT, CTL = (None,) * 4


def path(*parts):
    return os.path.join(SOURCE, *parts)


def read_flags(text):
    """A flag file or argument list -> {name: value} (True for a bare --flag)."""
    flags = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("--"), f"not a flag: {line!r}"
        name, eq, value = line[2:].partition("=")
        flags[name] = value if eq else True
    return flags


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def load_kustomization(folder):
    """The objects a kustomization lists (its resources, and the generated ConfigMaps
    as {name: {file: text}}), without kubectl."""
    with open(os.path.join(folder, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    objects = []
    for resource in kust.get("resources", []):
        with open(os.path.join(folder, resource)) as f:
            objects += [o for o in yaml.safe_load_all(f) if o]
    config_maps = {}
    for gen in kust.get("configMapGenerator", []):
        files = {}
        for file in gen.get("files", []):
            with open(os.path.join(folder, file)) as f:
                files[os.path.basename(file)] = f.read()
        config_maps[gen["name"]] = files
    return kust, objects, config_maps


def find(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def under(file, folder):
    return os.path.commonpath([file, folder]) == folder.rstrip("/")


def dockerfile_stage(name):
    """The instructions of one stage of deploy/container/Dockerfile, continuation lines
    joined."""
    with open(path("deploy", "container", "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stage, lines = None, []
    for line in text.splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line.strip(), re.I)
        if m:
            stage = m.group(1)
            continue
        if stage == name and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    assert lines, f"no stage {name} in the Dockerfile"
    return lines


def instruction(lines, keyword):
    return [l[len(keyword):].strip() for l in lines if l.upper().startswith(keyword + " ")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Manifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.kust, cls.objects, cls.config_maps = load_kustomization(
            path("deploy", "kubernetes"))
        _, cls.contributor_objects, _ = load_kustomization(
            path("deploy", "kubernetes", "contributor"))
        cls.sts = find(cls.objects, "StatefulSet", "coldfused")
        cls.pod = cls.sts["spec"]["template"]["spec"]
        (cls.container,) = cls.pod["containers"]
        command = cls.container["command"]
        assert command[0] == "coldfused", command
        (flagfile,) = [a.split("=", 1)[1] for a in command if a.startswith("--flagfile=")]
        cls.flagfile = flagfile
        cls.mounts = {m["name"]: m for m in cls.container["volumeMounts"]}
        cls.volumes = {v["name"]: v for v in cls.pod["volumes"]}
        config = [n for n, v in cls.volumes.items() if "configMap" in v]
        assert len(config) == 1
        cm_name = cls.volumes[config[0]]["configMap"]["name"]
        mount = cls.mounts[config[0]]["mountPath"]
        assert os.path.dirname(flagfile) == mount, (
            f"--flagfile={flagfile} is not in the ConfigMap's mount {mount}")
        cls.k8s_flags_text = cls.config_maps[cm_name][os.path.basename(flagfile)]
        cls.k8s_flags = read_flags(cls.k8s_flags_text)
        with open(path("deploy", "container", "coldfused.flags")) as f:
            cls.image_flags_text = f.read()
        cls.image_flags = read_flags(cls.image_flags_text)
        with open(path("deploy", "compose.yaml")) as f:
            cls.compose = yaml.safe_load(f)
        with open(path("deploy", "prometheus", "prometheus.yml")) as f:
            cls.prometheus = yaml.safe_load(f)
        cls.server_stage = dockerfile_stage("server")

    def run_version(self, binary, args):
        """The program parses ARGS (unknown flags fail) and exits at --version."""
        r = subprocess.run([binary, *args, "--version"], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, f"{os.path.basename(binary)} refused {args}:\n"
                         f"{r.stdout}{r.stderr}")

    # ---------------------------------------------------------------- flags are real

    def test_server_flag_files_are_accepted_by_coldfused(self):
        with tempfile.TemporaryDirectory() as tmp:
            compose = self.compose["services"]["coldfused"].get("command", [])
            for name, text, extra in [("kubernetes", self.k8s_flags_text, []),
                                      ("image + compose", self.image_flags_text, compose)]:
                with self.subTest(flags=name):
                    file = os.path.join(tmp, "coldfused.flags")
                    with open(file, "w") as f:
                        f.write(text)
                    self.run_version(COLDFUSED, [f"--flagfile={file}", *extra])

    def test_contributor_command_lines_are_accepted_by_coldfuse_client(self):
        deployment = find(self.contributor_objects, "Deployment", "coldfuse-alice")
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        self.run_version(CLIENT, c["args"])
        for name in ("alice", "bob"):
            args = [re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", a)
                    for a in self.compose["services"][name]["command"]]
            with self.subTest(compose=name):
                self.run_version(CLIENT, args)

    # -------------------------------------------------------------- ports and probes

    def test_kubernetes_ports_probes_and_annotations_match_the_flags(self):
        grpc, http = port_of(self.k8s_flags["listen"]), port_of(self.k8s_flags["http_listen"])
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(ports, {"grpc": grpc, "http": http})
        tls = "tls_cert" in self.k8s_flags
        scheme = "HTTPS" if tls else "HTTP"
        probes = {k: self.container[k] for k in ("startupProbe", "livenessProbe",
                                                  "readinessProbe")}
        for kind, probe in probes.items():
            get = probe["httpGet"]
            self.assertIn(get["port"], ("http", http), kind)
            self.assertEqual(get["scheme"], scheme, kind)
        self.assertEqual(probes["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(probes["startupProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(probes["readinessProbe"]["httpGet"]["path"], "/readyz")
        ann = self.sts["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(ann["prometheus.io/scrape"], "true")
        self.assertEqual(int(ann["prometheus.io/port"]), http)
        self.assertEqual(ann["prometheus.io/path"], "/metrics")
        self.assertEqual(ann["prometheus.io/scheme"], scheme.lower())
        # Annotation-based scraping sends no token.
        self.assertIs(self.k8s_flags.get("metrics_without_token"), True)
        for svc in (o for o in self.objects if o["kind"] == "Service"):
            with self.subTest(service=svc["metadata"]["name"]):
                got = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
                self.assertEqual(got, {"grpc": "grpc", "http": "http"})
                self.assertEqual(svc["spec"]["selector"],
                                 self.sts["spec"]["selector"]["matchLabels"])
        self.assertEqual(self.sts["spec"]["serviceName"], "coldfused-headless")
        self.assertEqual(self.sts["spec"]["replicas"], 1)  # the single writer

    def test_file_owners_are_the_images_users(self):
        uid = lambda stage: int(instruction(dockerfile_stage(stage), "USER")[0].split(":")[0])
        with open(path("deploy", "container", "compose-setup.sh")) as f:
            setup = f.read()
        # compose-setup.sh gives each service's certificates and token to its user.
        self.assertIn(f"COLDFUSE_UID={uid('server')}", setup)
        self.assertEqual(uid("server"), uid("client"))
        self.assertIn(f"PROMETHEUS_UID={uid('prometheus')}", setup)
        deployment = find(self.contributor_objects, "Deployment", "coldfuse-alice")
        pod = deployment["spec"]["template"]["spec"]
        self.assertEqual(pod["securityContext"]["runAsUser"], uid("client"))
        self.assertEqual(pod["securityContext"]["fsGroup"], uid("client"))
        self.assertEqual(self.pod["securityContext"]["fsGroup"], uid("server"))

    def test_kubernetes_contributor_reaches_the_service(self):
        deployment = find(self.contributor_objects, "Deployment", "coldfuse-alice")
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        server = read_flags("\n".join(c["args"]))["server"]
        svc = find(self.objects, "Service", "coldfused")
        host, port = server.rsplit(":", 1)
        self.assertTrue(host.startswith("coldfused." + self.kust["namespace"]), host)
        self.assertIn(int(port), [p["port"] for p in svc["spec"]["ports"]
                                  if p["name"] == "grpc"])

    def test_image_and_compose_ports_match_the_image_flags(self):
        grpc = port_of(self.image_flags["listen"])
        http = port_of(self.image_flags["http_listen"])
        expose = " ".join(instruction(self.server_stage, "EXPOSE")).split()
        self.assertEqual(sorted(int(p) for p in expose), sorted([grpc, http]))
        (healthcheck,) = instruction(self.server_stage, "HEALTHCHECK")
        self.assertIn('"coldfuse-healthcheck", "/readyz"', healthcheck)
        with open(path("deploy", "container", "healthcheck.sh")) as f:
            self.assertIn(f"COLDFUSE_HTTP_PORT:-{http}}}", f.read())
        server = self.compose["services"]["coldfused"]
        published = sorted(int(p.rsplit(":", 1)[1]) for p in server["ports"])
        self.assertEqual(published, sorted([grpc, http]))
        (job,) = self.prometheus["scrape_configs"]
        self.assertEqual(job["static_configs"][0]["targets"], [f"coldfused:{http}"])
        self.assertEqual(job["scheme"], "https" if "tls_cert" in self.image_flags else "http")
        self.assertEqual(job["metrics_path"], "/metrics")
        # /metrics needs a viewer token here (no --metrics_without_token in the image).
        self.assertNotIn("metrics_without_token", self.image_flags)
        self.assertIn("credentials_file", job["authorization"])
        for name in ("alice", "bob"):
            flags = read_flags("\n".join(self.compose["services"][name]["command"]))
            self.assertEqual(flags["server"], f"coldfused:{grpc}")

    # ------------------------------------------------------- files where they mount

    def test_kubernetes_flags_name_files_in_the_mounted_volumes(self):
        data = self.mounts["data"]["mountPath"]
        self.assertIn("data", [t["metadata"]["name"]
                               for t in self.sts["spec"]["volumeClaimTemplates"]])
        for flag in ("data_dir", "bootstrap_token_file"):
            self.assertTrue(under(self.k8s_flags[flag], data),
                            f"--{flag} is not on the PersistentVolume ({data})")
        tls = self.mounts["tls"]
        self.assertTrue(tls["readOnly"])
        secret = self.volumes["tls"]["secret"]
        self.assertEqual(secret["defaultMode"] & 0o007, 0, "the server refuses an o+r key")
        keys = []
        for flag in ("tls_cert", "tls_key", "tls_client_ca"):
            self.assertEqual(os.path.dirname(self.k8s_flags[flag]), tls["mountPath"], flag)
            keys.append(os.path.basename(self.k8s_flags[flag]))
        # The guide's `kubectl create secret` makes exactly these keys.
        with open(path("docs", "containers.md")) as f:
            guide = f.read().replace("\\\n", " ")
        m = re.search(r"create secret generic " + secret["secretName"] + r"([^\n]*)", guide)
        self.assertTrue(m, f"docs/containers.md does not create {secret['secretName']}")
        self.assertEqual(sorted(re.findall(r"--from-file=([\w.]+)=", m.group(1))), sorted(keys))
        sc = self.container["securityContext"]
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        (user,) = instruction(self.server_stage, "USER")
        self.assertEqual(self.pod["securityContext"]["runAsUser"], int(user.split(":")[0]))
        self.assertTrue(self.pod["securityContext"]["runAsNonRoot"])

    def test_image_flags_name_files_in_the_image_and_compose_volumes(self):
        (volume,) = instruction(self.server_stage, "VOLUME")
        (data,) = yaml.safe_load(volume)
        for flag in ("data_dir", "bootstrap_token_file"):
            self.assertTrue(under(self.image_flags[flag], data), flag)
        entry = yaml.safe_load(instruction(self.server_stage, "ENTRYPOINT")[0])
        copied = [l for l in instruction(self.server_stage, "COPY")
                  if "deploy/container/coldfused.flags" in l]
        self.assertEqual(len(copied), 1)
        self.assertIn("--flagfile=" + copied[0].split()[-1], entry)
        mounts = dict(reversed(v.split(":")[:2])
                      for v in self.compose["services"]["coldfused"]["volumes"])
        self.assertEqual(mounts[data], "server-data")
        tls_dirs = {os.path.dirname(self.image_flags[f])
                    for f in ("tls_cert", "tls_key", "tls_client_ca")}
        self.assertEqual(len(tls_dirs), 1)
        self.assertEqual(mounts[tls_dirs.pop()], "server-tls")
        # compose-setup.sh puts the server's files there under these names.
        with open(path("deploy", "container", "compose-setup.sh")) as f:
            setup = f.read()
        for flag in ("tls_cert", "tls_key", "tls_client_ca"):
            name = os.path.basename(self.image_flags[flag])
            self.assertRegex(setup, r"give (server|\"\$name\") 0[0-7]{3} \S+ " + re.escape(name))

    # ------------------------------------------------------------ the real server

    def start_server(self, tmp, flags_text, extra=()):
        """coldfused with FLAGS_TEXT, absolute paths moved under TMP, loopback ports.
        Returns (process, grpc port, http port, {flag: moved path}, certificates folder
        with ca.crt and operator.crt/.key)."""
        moved = {}
        lines = []
        http = free_port()
        for name, value in read_flags(flags_text).items():
            if value is True:
                lines.append(f"--{name}")
                continue
            if name == "listen":
                value = "127.0.0.1:0"
            elif name == "http_listen":
                value = f"127.0.0.1:{http}"
            elif value.startswith("/"):
                value = moved[name] = os.path.join(tmp, value.lstrip("/"))
            lines.append(f"--{name}={value}")
        for flag in ("data_dir", "bootstrap_token_file"):  # on the volume: it exists
            os.makedirs(os.path.dirname(moved[flag]), mode=0o700, exist_ok=True)
        certs = os.path.join(tmp, "certs")
        subprocess.run(["bash", path("deploy", "make-certs.sh"), certs, "--client", "operator"],
                       check=True, capture_output=True, timeout=60)
        for flag, source in (("tls_cert", "server.crt"), ("tls_key", "server.key"),
                             ("tls_client_ca", "ca.crt")):
            if flag in moved:
                os.makedirs(os.path.dirname(moved[flag]), exist_ok=True)
                shutil.copy(os.path.join(certs, source), moved[flag])
                os.chmod(moved[flag], 0o440 if flag == "tls_key" else 0o444)
        port_file = os.path.join(tmp, "port")
        flagfile = os.path.join(tmp, "coldfused.flags")
        with open(flagfile, "w") as f:
            f.write("\n".join(lines + [f"--port_file={port_file}"]) + "\n")
        log = os.path.join(tmp, "coldfused.log")
        with open(log, "w") as out:
            proc = subprocess.Popen([COLDFUSED, f"--flagfile={flagfile}", *extra],
                                    stdout=out, stderr=subprocess.STDOUT)

        def reap():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

        self.addCleanup(reap)

        def port():
            try:
                with open(port_file) as f:
                    return f.read().strip()
            except FileNotFoundError:
                return ""

        deadline = time.time() + 60
        while not port():
            if proc.poll() is not None or time.time() > deadline:
                with open(log) as f:
                    self.fail(f"coldfused did not start:\n{f.read()}")
            time.sleep(0.1)
        return proc, int(port()), http, moved, certs

    def get(self, url, ca, token=None):
        context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
        request = urllib.request.Request(url)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ok(self, url, ca, seconds):
        deadline = time.time() + seconds
        while True:
            try:
                status, body = self.get(url, ca)
                if status == 200:
                    return body
            except OSError as e:  # not listening yet, TLS, timeouts
                status = repr(e)
            if time.time() > deadline:
                self.fail(f"{url}: {status} after {seconds} s")
            time.sleep(0.2)

    def ctl(self, port, certs, token_file, *args):
        return subprocess.run(
            [CTL, f"--server=127.0.0.1:{port}", f"--tls_ca={certs}/ca.crt",
             f"--tls_cert={certs}/operator.crt", f"--tls_key={certs}/operator.key",
             f"--token_file={token_file}", *args],
            capture_output=True, text=True, timeout=60)

    def stop(self, proc, grace_s):
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=grace_s), 0, "no clean exit on SIGTERM")

    def test_kubernetes_flags_serve_the_probes_and_annotated_metrics(self):
        with tempfile.TemporaryDirectory() as tmp:
            proc, grpc, http, moved, certs = self.start_server(tmp, self.k8s_flags_text)
            scheme = self.container["readinessProbe"]["httpGet"]["scheme"].lower()
            base = f"{scheme}://127.0.0.1:{http}"
            ca = os.path.join(certs, "ca.crt")
            startup = self.container["startupProbe"]
            # (Kubernetes would wait periodSeconds x failureThreshold; a loopback server
            # with an empty store is up in well under a minute.)
            self.wait_ok(base + startup["httpGet"]["path"], ca,
                         min(60, startup["periodSeconds"] * startup["failureThreshold"]))
            self.wait_ok(base + self.container["readinessProbe"]["httpGet"]["path"], ca, 30)
            self.wait_ok(base + self.container["livenessProbe"]["httpGet"]["path"], ca, 5)
            ann = self.sts["spec"]["template"]["metadata"]["annotations"]
            body = self.wait_ok(f"{ann['prometheus.io/scheme']}://127.0.0.1:{http}"
                                f"{ann['prometheus.io/path']}", ca, 5)
            self.assertIn("# TYPE", body)
            r = self.ctl(grpc, certs, moved["bootstrap_token_file"], "status")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.stop(proc, self.pod["terminationGracePeriodSeconds"])

    def test_image_flags_serve_the_healthcheck_and_metrics_with_a_viewer_token(self):
        with tempfile.TemporaryDirectory() as tmp:
            extra = self.compose["services"]["coldfused"].get("command", [])
            proc, grpc, http, moved, certs = self.start_server(tmp, self.image_flags_text,
                                                               extra)
            base = f"https://127.0.0.1:{http}"
            ca = os.path.join(certs, "ca.crt")
            self.wait_ok(base + "/readyz", ca, 60)
            status, _ = self.get(base + "/metrics", ca)
            self.assertEqual(status, 401, "/metrics without a token")
            token_file = os.path.join(tmp, "viewer.token")
            r = self.ctl(grpc, certs, moved["bootstrap_token_file"], "token", "create",
                         "--name=prometheus", "--role=viewer", f"--out={token_file}")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            with open(token_file) as f:
                status, body = self.get(base + "/metrics", ca, f.read().strip())
            self.assertEqual(status, 200, body)
            self.assertIn("# TYPE", body)
            grace = self.compose["services"]["coldfused"]["stop_grace_period"]
            self.stop(proc, int(grace.rstrip("s")))


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    SOURCE, COLDFUSED, CLIENT, CTL = sys.argv[1:5]
    unittest.main(argv=[sys.argv[0], *sys.argv[5:]], verbosity=2)
