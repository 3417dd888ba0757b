"""Promise 6: 200 slow-header (slowloris) connections and 200 clients that never read their answers
don't stop a normal client from being answered within 2x its idle latency; the request-head and
send timeouts then close them, and the connection cap answers 503 past its limit."""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from protos.mhaserve.v1 import encoder_pb2 as pb
from tests.support.http import raw_request

SLOWLORIS = 200
NON_READERS = 200
HEAD_TIMEOUT_S = 3.0  # of the `quick` server, whose timeouts the tests watch fire
SEND_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
STATIC = "/ui/static/ui.js"  # 10 kB, served from disk: the non-readers cost the server little to answer


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_until_quiet(pid: int, timeout_s: float = 20) -> None:
    """Until the server has worked off the hostile clients' first requests (< 5 % CPU over 0.5 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return
    raise TimeoutError("the server stayed busy")


def rest_latencies(url: str, n: int = 25) -> list[float]:
    with httpx.Client(base_url=url, timeout=30) as client:
        client.post("/v1/embed", json={"inputs": ["warm the connection"]})
        seconds = []
        for i in range(n):
            started = time.perf_counter()
            response = client.post("/v1/embed", json={"inputs": [f"a normal client's sentence {i % 5}"]})
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200
        return seconds


def grpc_latencies(target: str, n: int = 25) -> list[float]:
    with grpc.insecure_channel(target) as channel:
        embed = channel.unary_unary(
            "/mhaserve.v1.Encoder/Embed",
            request_serializer=pb.EmbedRequest.SerializeToString,
            response_deserializer=pb.EmbedResponse.FromString,
        )
        embed(pb.EmbedRequest(inputs=["warm the channel"]), timeout=30)
        seconds = []
        for i in range(n):
            started = time.perf_counter()
            embed(pb.EmbedRequest(inputs=[f"a normal client's sentence {i % 5}"]), timeout=30)
            seconds.append(time.perf_counter() - started)
        return seconds


def is_closed_by_server(sock: socket.socket) -> bool:
    """End-of-stream or a reset, seen without blocking (a send after the close may still succeed)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:  # open, nothing to read
        return False
    except OSError:  # reset
        return True


class Slowloris:
    """Connections that send a request head one byte a second, never finishing it."""

    def __init__(self, port: int, count: int):
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        for sock in self.sockets:
            sock.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(1.0):
            for sock in self.sockets:
                try:
                    sock.sendall(b"X")
                except OSError:  # the server closed it; closed_by_server() counts it
                    pass

    def closed_by_server(self) -> int:
        return sum(map(is_closed_by_server, self.sockets))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            sock.close()


def non_readers(port: int, count: int, pipelined: int = 8) -> list[socket.socket]:
    """Connections that pipeline requests and never read a byte of the answers."""
    request = f"GET {STATIC} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() * pipelined
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        sockets.append(sock)
    return sockets


@pytest.fixture
def quick(start_fake_server) -> Iterator:
    yield start_fake_server(
        "--http-header-timeout-s", str(HEAD_TIMEOUT_S), "--http-send-timeout-s", str(SEND_TIMEOUT_S),
        "--http-body-timeout-s", str(BODY_TIMEOUT_S),
    )  # fmt: skip


@pytest.mark.exclusive  # compares latencies: make test runs it after the rest, alone
def test_slowloris_and_non_reading_clients_do_not_slow_a_normal_client(start_fake_server):
    # timeouts longer than the test: every hostile connection is held open while we measure
    server = start_fake_server("--http-header-timeout-s", "60", "--http-send-timeout-s", "60", "--max-wait-ms", "0")
    pid = server.process.pid
    idle_rest = statistics.median(rest_latencies(server.url))
    idle_grpc = statistics.median(grpc_latencies(server.grpc_target))
    fds_before = open_fds(pid)
    slowloris = Slowloris(server.http_port, SLOWLORIS)
    stalled = non_readers(server.http_port, NON_READERS)
    try:
        wait_until_quiet(pid)  # accepted them all and answered what the non-readers' buffers take
        assert open_fds(pid) >= fds_before + SLOWLORIS + NON_READERS - 10
        under_attack_rest = statistics.median(rest_latencies(server.url))
        under_attack_grpc = statistics.median(grpc_latencies(server.grpc_target))
        assert open_fds(pid) >= fds_before + SLOWLORIS + NON_READERS - 10  # still held during the measurement
    finally:
        slowloris.close()
        for sock in stalled:
            sock.close()
    assert under_attack_rest <= 2 * idle_rest, (idle_rest, under_attack_rest)
    assert under_attack_grpc <= 2 * idle_grpc, (idle_grpc, under_attack_grpc)


def test_a_request_head_that_never_completes_is_closed_after_the_head_timeout(quick):
    started = time.monotonic()
    answer = raw_request(quick.http_port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n", timeout_s=HEAD_TIMEOUT_S + 5)
    elapsed = time.monotonic() - started
    assert answer == b""  # closed, not answered
    assert HEAD_TIMEOUT_S - 0.5 <= elapsed <= HEAD_TIMEOUT_S + 3


def test_a_request_body_that_never_completes_is_closed_after_the_body_timeout(quick):
    head = b"POST /v1/embed HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", quick.http_port)) as sock:
        sock.sendall(head + b'{"inputs": ["a body that')
        started = time.monotonic()
        while not is_closed_by_server(sock):  # a byte every 0.2 s: the body keeps coming, never completes
            assert time.monotonic() - started < BODY_TIMEOUT_S + 3, "the slow body was not cut off"
            time.sleep(0.2)
            try:
                sock.sendall(b"x")
            except OSError:
                break
        elapsed = time.monotonic() - started
    assert elapsed >= BODY_TIMEOUT_S - 0.5, elapsed
    fine = httpx.post(quick.url + "/v1/embed", json={"inputs": ["a whole body"]}, timeout=10)
    assert fine.status_code == 200
    assert "Traceback" not in quick.log()


def test_the_timeouts_free_every_slowloris_and_stalled_reader_connection(quick):
    pid = quick.process.pid
    fds_before = open_fds(pid)
    started = time.monotonic()
    slowloris = Slowloris(quick.http_port, 50)
    # 2,000 answers of 10 kB: far more than the socket buffers hold, so the server's writes stall
    (stalled,) = non_readers(quick.http_port, 1, pipelined=2000)
    try:
        time.sleep(0.5)
        assert open_fds(pid) >= fds_before + 50
        while open_fds(pid) > fds_before + 2:
            assert time.monotonic() - started < max(HEAD_TIMEOUT_S, SEND_TIMEOUT_S) + 8, open_fds(pid) - fds_before
            time.sleep(0.2)
        assert time.monotonic() - started >= min(HEAD_TIMEOUT_S, SEND_TIMEOUT_S) - 0.5
        deadline = time.monotonic() + 3  # the last close or two may still be on their way
        while slowloris.closed_by_server() < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert slowloris.closed_by_server() == 50
    finally:
        slowloris.close()
        stalled.close()
    assert httpx.get(quick.url + "/health/ready").status_code == 200


def test_a_request_head_over_the_size_limit_is_refused(start_fake_server):
    small = start_fake_server("--http-max-header-bytes", "4096")
    with socket.create_connection(("127.0.0.1", small.http_port), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 6000)  # 6 kB and not done
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    fine = raw_request(small.http_port, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert fine.startswith(b"HTTP/1.1 200")


def test_past_the_connection_cap_requests_get_503_at_once_and_service_resumes(start_fake_server):
    capped = start_fake_server("--http-max-connections", "20", "--http-header-timeout-s", "30")
    held = [socket.create_connection(("127.0.0.1", capped.http_port)) for _ in range(20)]
    try:
        for sock in held:
            sock.sendall(b"GET /health/live HTTP/1.1\r\n")  # open and unfinished
        time.sleep(0.3)
        started = time.monotonic()
        refused = httpx.post(capped.url + "/v1/embed", json={"inputs": ["over the cap"]}, timeout=10)
        assert refused.status_code == 503 and time.monotonic() - started < 1.0
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert httpx.post(capped.url + "/v1/embed", json={"inputs": ["under the cap"]}, timeout=10).status_code == 200
