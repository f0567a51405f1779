"""A real nginx started from the shipped front template (deploy/nginx/), its placeholders filled
for the test, with a self-signed certificate made by `openssl`; and the readers of its access
log and of the proxies' /metrics that the front tests assert on.

nginx and HAProxy run inside the shipped front images (deploy/nginx/ and deploy/haproxy/
Dockerfiles: Debian 13's nginx 1.26 and HAProxy 3.0; the `nginx_image` and `haproxy_image`
fixtures of tests/conftest.py), on the host's network, with the test's files mounted at the same
paths: the versions that ship, not the host's."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from harness.nginx import debian_tool, write_conf
from harness.processes import Process, find_free_port

ROOT = Path(__file__).resolve().parents[2]
# The flush policy of replicas behind the front, as deploy/kubernetes configures them: bursts
# are what reaches them, and `window` sends a burst in the fewest calls (docs/deploy.md).
REPLICA_POLICY = "window"
TEMPLATE = ROOT / "deploy" / "nginx" / "dstack-coalescer.conf.template"
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")

# The http block a test runs the shipped snippet in (inside nginx.py's wrapper): an access log
# naming the client connection, protocol and upstream of each request.
_FRONT_HTTP = """\
    log_format front escape=json '{{"connection": $connection, "protocol": "$server_protocol",'
        ' "status": $status, "uri": "$request_uri", "upstream": "$upstream_addr"}}';
    access_log {dir}/access.log front;
    include {dir}/front.conf;"""


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with each `${NAME}` replaced, as the nginx image's envsubst does; a
    placeholder left without a value is an error, never an empty string."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for placeholders {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def in_image(
    image: str,
    name: str,
    binary: str,
    mounts: Sequence[Path],
    env: Mapping[str, str],
    user: str = "",
) -> list[str]:
    """The command line that runs `binary` in `image` as container `name`, in the foreground,
    on the host's network, with `mounts` at the same paths and `env` set. `docker run` passes
    the signals it gets to the process (graceful stops included) and exits with its status."""
    command = ["docker", "run", "--rm", "--name", name, "--network", "host"]
    command += ["--entrypoint", binary]
    command += ["--user", user] if user else []
    command += [f"--volume={m}:{m}" for m in mounts]
    command += [f"--env={key}={value}" for key, value in env.items()]
    return [*command, image]


def remove_container(name: str) -> None:
    """Make sure container `name` is gone, whatever its process did with the stop signal."""
    subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)


def stop_container(proc: subprocess.Popen[bytes] | None, name: str, signum: signal.Signals) -> None:
    """Stop the `docker run` in `proc` with `signum` (the image's stop signal), killing it after
    10 s, then remove container `name`."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    remove_container(name)


def container_name() -> str:
    return f"dcx-front-{secrets.token_hex(4)}"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Logged:
    """One access-log line of the front."""

    connection: int
    protocol: str
    status: int
    uri: str
    upstream: str


class NginxFront:
    """nginx serving the shipped template on a free loopback port, in `directory`."""

    def __init__(
        self,
        directory: Path,
        coalescers: Sequence[str],
        dstack: str,
        cert: tuple[Path, Path],
        image: str,
        route: str = "batchable",
    ) -> None:
        self.dir, self.port, self.image = directory, find_free_port(), image
        self.container = container_name()
        self.mounts = sorted({directory, cert[0].parent, cert[1].parent})
        self.url = f"https://127.0.0.1:{self.port}"
        self.values = {
            "FRONT_LISTEN": f"127.0.0.1:{self.port}",
            "FRONT_PUBLIC_PORT": str(self.port),
            # As shipped: the image's nginx 1.26 takes `http2 on;`.
            "FRONT_LISTEN_HTTP2": "",
            "FRONT_HTTP2": "http2 on;",
            "FRONT_TLS_CERT": str(cert[0]),
            "FRONT_TLS_KEY": str(cert[1]),
            "FRONT_COALESCER_SERVERS": " ".join(f"server {a};" for a in coalescers),
            "FRONT_DSTACK_SERVER": dstack,
            "FRONT_ROUTE": route,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def __enter__(self) -> NginxFront:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "front.conf").write_text(render(TEMPLATE.read_text(), self.values))
        conf = write_conf(self.dir, _FRONT_HTTP.format(dir=self.dir), "info", 1024)
        # As root: the test's directory is private to it (nginx's workers drop to nobody).
        command = in_image(self.image, self.container, "nginx", self.mounts, {}, user="0:0")
        self.proc = subprocess.Popen(
            [
                *command,
                "-p", str(self.dir),
                "-c", str(conf),
                "-e", str(self.dir / "error.log"),
                "-g", "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}:\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not listen:\n{self.error_log()}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    def stop(self) -> None:
        stop_container(self.proc, self.container, signal.SIGQUIT)  # graceful: finish requests

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def log_mark(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def logged(self, since: int = 0, at_least: int = 0, timeout: float = 10) -> list[Logged]:
        """Requests nginx logged after the mark `since`. nginx writes a line once the answer is
        sent, so a client can hold its answer a moment before: wait for `at_least` lines."""
        deadline = time.monotonic() + timeout
        while True:
            with self.access_log.open("rb") as f:
                f.seek(since)
                lines = f.read().decode().splitlines()
            if len(lines) >= at_least or time.monotonic() > deadline:
                return [Logged(**json.loads(line)) for line in lines if line]
            time.sleep(0.05)


def scrape(admin_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a proxy's admin /metrics: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    metrics: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


RING_DIR = ROOT / "deploy" / "haproxy"


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` a moment ago (a DNS server takes both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


class Dnsmasq:
    """A real DNS server (Debian's dnsmasq) on a free loopback UDP port, authoritative for
    `domain`: the names set with `serve` (several addresses per name allowed), NXDOMAIN for
    any other name under it. `serve` rewrites its hosts file and reloads it (SIGHUP)."""

    def __init__(self, directory: Path, domain: str = "test") -> None:
        self.dir, self.domain = directory, domain
        self.port = free_dns_port()
        self.address = f"127.0.0.1:{self.port}"
        self.hosts = directory / "hosts"
        self.proc: subprocess.Popen[bytes] | None = None

    def serve(self, records: Mapping[str, Sequence[str]]) -> None:
        lines = [f"{ip} {name}" for name, ips in records.items() for ip in ips]
        self.hosts.write_text("".join(f"{line}\n" for line in lines))
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def __enter__(self) -> Dnsmasq:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.hosts.exists():
            self.hosts.write_text("")
        user = ["--user=root"] if os.geteuid() == 0 else []  # else it drops to `nobody`
        with (self.dir / "dnsmasq.log").open("ab") as log:
            self.proc = self._start(log, user)
        time.sleep(0.2)
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited:\n{(self.dir / 'dnsmasq.log').read_text()}")
        return self

    def _start(self, log: IO[bytes], user: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                debian_tool("dnsmasq", "dnsmasq-base"),
                "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={self.port}",
                f"--addn-hosts={self.hosts}", f"--local=/{self.domain}/", "--local-ttl=0",
                "--pid-file=", "--log-facility=-", *user,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip

    def __exit__(self, *exc: object | TracebackType) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class HaproxyRing:
    """The shipped hash ring (deploy/haproxy/ring.cfg and a discovery file), run by a real
    HAProxy with the environment the deployment sets, on a free loopback port."""

    def __init__(
        self,
        directory: Path,
        discovery: str,
        env: Mapping[str, str],
        image: str,
    ) -> None:
        self.dir, self.discovery, self.image = directory, discovery, image
        self.container = container_name()
        self.port = find_free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {"PATH": os.environ.get("PATH", ""), "RING_LISTEN": self.address, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.dir / "haproxy.log"

    def __enter__(self) -> HaproxyRing:
        self.dir.mkdir(parents=True, exist_ok=True)
        files = ["-f", str(RING_DIR / "ring.cfg"), "-f", str(RING_DIR / self.discovery)]
        env = {k: v for k, v in self.env.items() if k != "PATH"}
        command = in_image(self.image, self.container, "haproxy", [self.dir, RING_DIR], env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "-db", *files],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not listen:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object | TracebackType) -> None:
        # HAProxy is the container's PID 1, which ignores SIGTERM: the image's stop signal.
        stop_container(self.proc, self.container, signal.SIGUSR1)

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


class Replica(Process):
    """A proxy replica (`python -m proxy`) on its own loopback address, with the shipped
    Kubernetes configuration file: the same ports on every replica, as pods have."""

    def __init__(
        self, address: str, port: int, admin_port: int, upstream: str, config: Path, log: Path
    ) -> None:
        self.address, self.port = address, port
        self.url = f"http://{address}:{port}"
        self.admin_url = f"http://{address}:{admin_port}"
        super().__init__(
            [
                sys.executable, "-m", "proxy", "--config", str(config),
                "--upstream", upstream, "--host", address, "--port", str(port),
                "--admin-host", address, "--admin-port", str(admin_port),
                "--trusted-proxies", "127.0.0.1", "--log-format", "console",
            ],
            f"{self.admin_url}/healthz",
            log,
            grace=120.0,
        )  # fmt: skip
