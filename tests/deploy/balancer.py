"""HAProxy in front of replicas, as a Kubernetes Service's balancing behaves: every ready replica
gets requests in turn, a replica leaves rotation after its readiness check fails
`failureThreshold` times `periodSeconds` apart and comes back after `successThreshold` passes.

REST arrives over HTTP/1.1 and gRPC over HTTP/2 (`proto h2` on both sides), each request balanced
on its own. Both backends follow one readiness check per replica, GET /health/ready on its REST
port (the gRPC servers `track` it). A connection a replica refuses is retried on another replica
(HAProxy's default `retry-on conn-failure`, with `option redispatch`); a request already sent is
never sent again, so one that a replica drops fails as its client sees it.

Every request carries an `x-request-id`; the log names the replica that answered it, its status
and how it ended (HAProxy's termination state), so a client's failure can be traced to a replica.
HAProxy 2.6 does not log a gRPC stream whose replica's connection broke under it (the client gets
RST_STREAM REFUSED_STREAM, UNAVAILABLE): those show as requests a replica was sent (`sessions`)
that the log does not hold.
"""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.containers import free_port

REQUEST_ID = "x-request-id"
LOG_FORMAT = "%[capture.req.hdr(0)] %b %s %ST %ts %rc"


@dataclass(frozen=True)
class Replica:
    """A balancer's slot: the loopback ports a replica serves on, whether or not it runs yet."""

    name: str
    http_port: int
    grpc_port: int


@dataclass(frozen=True)
class ReadinessCheck:
    """The readiness probe as a balancer applies it (seconds, counts)."""

    period_s: float
    timeout_s: float
    failures: int
    successes: int

    @classmethod
    def of_probe(cls, probe: dict) -> ReadinessCheck:
        """From a Kubernetes probe, with Kubernetes' defaults for what it leaves out."""
        return cls(
            period_s=probe.get("periodSeconds", 10),
            timeout_s=probe.get("timeoutSeconds", 1),
            failures=probe.get("failureThreshold", 3),
            successes=probe.get("successThreshold", 1),
        )

    @property
    def out_of_rotation_within_s(self) -> float:
        """The longest a ready replica whose readiness turned false can still be sent requests."""
        return self.period_s * self.failures


@dataclass
class Logged:
    request_id: str
    backend: str
    server: str
    status: str
    termination: str  # "--": a normal end; "SH", "SD", ...: the server side broke off
    retries: str


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


def config(rest_port: int, grpc_port: int, replicas: list[Replica], check: ReadinessCheck, socket_path: Path) -> str:
    servers_rest = "\n".join(f"    server {r.name} 127.0.0.1:{r.http_port} check" for r in replicas)
    servers_grpc = "\n".join(
        f"    server {r.name} 127.0.0.1:{r.grpc_port} proto h2 track rest/{r.name}" for r in replicas
    )
    return f"""\
global
    log stdout format raw local0 info
    stats socket {socket_path} mode 600 level admin
    nbthread 1

defaults
    mode http
    log global
    log-format "{LOG_FORMAT}"
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    timeout check {check.timeout_s}s
    retries 3
    option redispatch 1
    default-server inter {check.period_s}s fall {check.failures} rise {check.successes}

frontend rest
    bind 127.0.0.1:{rest_port}
    capture request header {REQUEST_ID} len 24
    default_backend rest

frontend grpc
    bind 127.0.0.1:{grpc_port} proto h2
    capture request header {REQUEST_ID} len 24
    default_backend grpc

backend rest
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health/ready ver HTTP/1.1 hdr host 127.0.0.1
    http-check expect status 200
{servers_rest}

backend grpc
    balance roundrobin
{servers_grpc}
"""


@dataclass
class Balancer:
    """A running HAProxy; `states` and `transitions` follow its view of each replica."""

    process: subprocess.Popen
    rest_port: int
    grpc_port: int
    socket_path: Path
    log_path: Path
    transitions: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic, replica, status)
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, haproxy: str, workdir: Path, replicas: list[Replica], check: ReadinessCheck) -> Balancer:
        rest_port, grpc_port = free_port(), free_port()
        socket_path, log_path, config_path = workdir / "haproxy.sock", workdir / "haproxy.log", workdir / "haproxy.cfg"
        config_path.write_text(config(rest_port, grpc_port, replicas, check, socket_path))
        checked = subprocess.run([haproxy, "-c", "-q", "-f", str(config_path)], capture_output=True, text=True)
        assert checked.returncode == 0, f"haproxy refuses its configuration:\n{checked.stdout}{checked.stderr}"
        with log_path.open("wb") as log:
            process = subprocess.Popen([haproxy, "-db", "-f", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        balancer = cls(process, rest_port, grpc_port, socket_path, log_path)
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert process.poll() is None and time.monotonic() < deadline, balancer.log_text()
            time.sleep(0.05)
        threading.Thread(target=balancer._follow, name="haproxy-states", daemon=True).start()
        return balancer

    def command(self, line: str) -> str:
        """One command on HAProxy's runtime API."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each replica's status in the REST backend (the gRPC backend tracks it): UP, DOWN, ..."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "rest" and row["type"] == "2"}

    def sessions(self) -> dict[tuple[str, str], int]:
        """(backend, replica) -> requests the balancer has sent that replica so far."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {(row["pxname"], row["svname"]): int(row["stot"]) for row in rows if row["type"] == "2"}

    def _follow(self) -> None:
        shown: dict[str, str] = {}
        while not self._stop.is_set() and self.process.poll() is None:
            try:
                states = self.states()
            except OSError:
                break
            now = time.monotonic()
            for name, status in states.items():
                if shown.get(name) != status:
                    self.transitions.append((now, name, status))
            shown = states
            self._stop.wait(0.05)

    def first(self, replica: str, status: str, after: float = 0.0) -> float | None:
        """When the balancer was first seen holding `replica` in `status` (UP, DOWN) after `after`."""
        return next((t for t, name, s in list(self.transitions) if name == replica and s == status and t > after), None)

    def wait_for(self, replica: str, status: str, within_s: float, after: float = 0.0) -> float:
        deadline = time.monotonic() + within_s
        while (seen := self.first(replica, status, after)) is None:
            assert time.monotonic() < deadline, f"{replica} not {status} within {within_s} s: {self.transitions}"
            time.sleep(0.05)
        return seen

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self) -> dict[str, Logged]:
        """Request id -> what the balancer logged of it (requests without an id are left out)."""
        entries = {}
        for line in self.log_text().splitlines():
            parts = line.split()
            if len(parts) == 6 and parts[0] != "-" and parts[1] in ("rest", "grpc"):
                entries[parts[0]] = Logged(*parts)
        return entries

    def stop(self) -> None:
        self._stop.set()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
