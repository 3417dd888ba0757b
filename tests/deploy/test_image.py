"""The CPU image, run as users run it: `make test-image` (pytest -m image).

Each container runs read-only with a tmpfs at /tmp, as the image's own user, on host networking
bound to 127.0.0.1 on ports chosen at random, so no traffic leaves loopback (the engine runs
without a bridge: `dockerd --bridge=none --iptables=false`). Without a container engine the tests
skip and say why; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.containers import IMAGE, READY_WITHIN_S, Container, docker_run, free_port, start

pytestmark = pytest.mark.image

GPU_IMAGE = os.environ.get("MHASERVE_TEST_GPU_IMAGE", "mhaserve:gpu")
GRACE_S = 10.0  # MHASERVE_SHUTDOWN_GRACE_S of the drain test
MAX_ADDED_MB = 450
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention weights are not explanations.",
    "x",
    "Ein Satz auf Deutsch, mit Umlauten: äöü.",
    " ".join(["long"] * 300),  # cut at the model's max_len
]


# containers --------------------------------------------------------------------------------------


@pytest.fixture
def container_factory(docker, image):
    started: list[Container] = []

    def make(suffix: str, **kwargs) -> Container:
        container = start(docker, f"mhaserve-test-{suffix}-{os.getpid()}", **kwargs)
        started.append(container)
        return container

    yield make
    for container in started:
        docker_run(docker, "rm", "--force", container.name, check=False)


@pytest.fixture(scope="module")
def plain(docker, image):
    container = start(docker, f"mhaserve-test-plain-{os.getpid()}")
    container.ready_s = container.wait_ready()
    yield container
    docker_run(docker, "rm", "--force", container.name, check=False)


# what is served ----------------------------------------------------------------------------------


def in_process_embeddings(artifact: Path, sentences: list[str]) -> np.ndarray:
    """onnxruntime in this process on the same fast graph: one sentence per run (no padding),
    mean pooling over the real tokens, L2-normalised, as the manifest says."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((artifact / "manifest.json").read_text())
    assert (manifest["pooling"], manifest["normalize"]) == ("mean", True), "this reference pools by mean"
    fast = manifest["graphs"]["fast"]
    session = ort.InferenceSession(str(artifact / fast["file"]), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(manifest["max_len"])
    rows = []
    for sentence in sentences:
        encoding = tokenizer.encode(sentence)
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.ones_like(ids)
        (hidden,) = session.run(None, dict(zip(fast["inputs"], (ids, mask), strict=True)))
        pooled = hidden[0].mean(axis=0)
        rows.append(pooled / np.linalg.norm(pooled))
    return np.stack(rows)


def test_ready_within_60_s_and_embeddings_equal_in_process_onnxruntime(plain, image_artifact):
    assert plain.ready_s < READY_WITHIN_S
    status, body = plain.request("/v1/embed", {"inputs": SENTENCES})
    assert status == 200, body
    served = np.array(body["embeddings"], dtype=np.float32)
    expected = in_process_embeddings(image_artifact, SENTENCES)
    d_model = json.loads((image_artifact / "manifest.json").read_text())["d_model"]
    assert served.shape == expected.shape == (len(SENTENCES), d_model)
    np.testing.assert_allclose(served, expected, atol=2e-5, rtol=0)


def test_grpc_health_answers_serving_on_loopback(plain):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{plain.grpc_port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_docker_healthcheck_reaches_healthy(plain, image):
    check = ["CMD", "nice", "-n", "19", "python", "/opt/mhaserve/healthcheck.py"]
    assert image["Config"]["Healthcheck"]["Test"] == check  # at the lowest priority: docs/images.md
    log = plain.wait_health()
    assert log and log[-1]["ExitCode"] == 0, log


# inside the image ----------------------------------------------------------------------------------

WRITABLE_PROBE = r"""
import os, tempfile
skip = ("/proc", "/sys", "/dev")  # kernel interfaces, not the image's files
writable = []
for root, dirs, _ in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
    try:
        tempfile.TemporaryFile(dir=root).close()
    except OSError:
        continue
    writable.append(root)
print("\n".join(writable))
"""


def test_runs_as_its_own_non_root_user(plain, image):
    assert image["Config"]["User"] == "10001:10001"
    assert plain.exec("id", "-u").stdout.strip() == "10001"
    assert plain.exec("id", "-g").stdout.strip() == "10001"
    status = plain.exec("cat", "/proc/1/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) == {"10001"}, "the server itself runs as the image's user"


def test_only_tmp_is_writable(plain):
    result = plain.exec("python", "-c", WRITABLE_PROBE)
    assert result.returncode == 0, result.stderr
    writable = result.stdout.split()
    assert writable and all(path == "/tmp" or path.startswith("/tmp/") for path in writable), writable


def test_no_torch_no_cuda_no_tensorrt(plain):
    probe = (
        "import importlib.util, onnxruntime as ort;"
        "print(importlib.util.find_spec('torch') is None, ','.join(ort.get_available_providers()))"
    )
    result = plain.exec("python", "-c", probe)
    assert result.returncode == 0, result.stderr
    no_torch, providers = result.stdout.split()
    assert no_torch == "True"
    assert "CUDAExecutionProvider" not in providers and "TensorrtExecutionProvider" not in providers, providers
    libraries = plain.exec(
        "find", "/", "-xdev", "(", "-name", "libcudart*", "-o", "-name", "libcublas*", "-o", "-name", "libcudnn*",
        "-o", "-name", "libnvinfer*", "-o", "-name", "libonnxruntime_providers_cuda*", "-o",
        "-name", "libonnxruntime_providers_tensorrt*", "-o", "-name", "torch", ")", "-print",
    )  # fmt: skip
    assert libraries.stdout.strip() == "", libraries.stdout


def test_adds_at_most_450_mb_to_its_base(docker, image):
    base = image["Config"]["Labels"]["org.opencontainers.image.base.name"]
    (base_image,) = json.loads(docker_run(docker, "image", "inspect", base).stdout)
    added_mb = (image["Size"] - base_image["Size"]) / 1e6
    print(f"{IMAGE}: {image['Size'] / 1e6:.0f} MB, {added_mb:.0f} MB on {base} ({base_image['Size'] / 1e6:.0f} MB)")
    assert 0 < added_mb <= MAX_ADDED_MB


# TLS and keys: the healthcheck follows the server --------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for a DNS name only (not 127.0.0.1), so a check by address has to pin it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mhaserve.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mhaserve.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o755, exist_ok=True)
    directory.chmod(0o755)  # the container's user reads these
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for path in (cert_path, key_path):
        path.chmod(0o644)
    return cert_path, key_path


def test_healthy_with_tls_and_api_keys_set_by_flags_and_environment(container_factory, tmp_path):
    cert, _ = self_signed(tmp_path / "certs")
    tmp_path.chmod(0o755)
    pinned = ssl.create_default_context(cafile=str(cert))
    pinned.check_hostname = False
    pinned.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # TLS and the ports as flags (`docker run IMAGE --flag ...`), the key in the environment
    ports = (free_port(), free_port())
    container = container_factory(
        "tls",
        env={"MHASERVE_API_KEYS": "test-key-1"},
        args=(
            *("--host", "127.0.0.1", "--http-port", str(ports[0]), f"--grpc-port={ports[1]}"),
            *("--tls-cert", "/certs/tls.crt", "--tls-key", "/certs/tls.key"),
        ),
        mounts=(f"{tmp_path / 'certs'}:/certs:ro",),
        scheme="https",
        context=pinned,
    )
    container.http_port, container.grpc_port = ports
    container.wait_ready()
    with pytest.raises(OSError):  # plain HTTP is not what this server speaks
        urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/health/ready", timeout=5)
    assert container.request("/v1/embed", {"inputs": ["hi"]})[0] == 401
    container.headers = {"Authorization": "Bearer test-key-1"}
    assert container.request("/v1/embed", {"inputs": ["hi"]})[0] == 200
    log = container.wait_health()
    assert log[-1]["ExitCode"] == 0, log


def test_healthcheck_reports_a_server_that_is_not_there(plain):
    # the same script with the port of nothing: the probe fails and says where it asked
    result = docker_run(plain.docker, "exec", "--env", f"MHASERVE_HTTP_PORT={free_port()}", plain.name,
                        "python", "/opt/mhaserve/healthcheck.py", check=False)  # fmt: skip
    assert result.returncode == 1
    assert "not ready: http://127.0.0.1:" in result.stderr


# docker stop during a burst -----------------------------------------------------------------------------

CLOSED = "closed"  # the port refused the connection: nothing was accepted


def one_request(container: Container, body: bytes) -> str:
    """POST /v1/embed on a new connection: the status, CLOSED, or what went wrong."""
    with socket.socket() as connection:
        connection.settimeout(30)
        try:
            connection.connect(("127.0.0.1", container.http_port))
        except ConnectionRefusedError:
            return CLOSED
        try:
            connection.sendall(
                b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        except OSError as exc:
            return f"lost: {exc!r}"  # accepted, then dropped
    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else f"no answer: {answer[:40]!r}"


def burst_client(container: Container, stop: threading.Event, outcomes: list, lock: threading.Lock) -> None:
    body = json.dumps({"inputs": SENTENCES[:4] * 4}).encode()
    while not stop.is_set():
        sent_at = time.monotonic()
        status = one_request(container, body)
        with lock:
            outcomes.append((sent_at, time.monotonic(), status))
        if status == CLOSED:
            return  # the server is gone: a client would go elsewhere
        if status == "503":
            time.sleep(0.5)  # draining: a well-behaved client backs off


def test_docker_stop_during_a_burst_answers_every_accepted_request_and_exits_0(container_factory):
    container = container_factory("drain", env={"MHASERVE_SHUTDOWN_GRACE_S": str(GRACE_S)})
    container.wait_ready()
    stop, lock, outcomes = threading.Event(), threading.Lock(), []
    clients = [threading.Thread(target=burst_client, args=(container, stop, outcomes, lock)) for _ in range(8)]
    for client in clients:
        client.start()
    time.sleep(2.0)
    stopped_at = time.monotonic()
    result = docker_run(container.docker, "stop", "--time", str(int(GRACE_S) + 20), container.name, timeout=60)
    stop_s = time.monotonic() - stopped_at
    stop.set()
    for client in clients:
        client.join(timeout=60)
    state = container.state()
    logs = container.logs()
    assert result.returncode == 0
    assert state["ExitCode"] == 0, (state, logs)
    assert not state["OOMKilled"]
    assert stop_s < GRACE_S, f"docker stop took {stop_s:.1f} s (grace {GRACE_S} s)"
    bad = [o for o in outcomes if o[2] not in ("200", "503", CLOSED)]
    assert not bad, bad[:5]
    in_flight = [o for o in outcomes if o[2] == "200" and o[0] < stopped_at < o[1]]
    assert in_flight, "nothing was in flight when docker stop began: the test proved nothing"
    assert sum(o[2] == "200" for o in outcomes) > 10, outcomes[:10]


# the GPU image on a machine without a GPU ----------------------------------------------------------------


@pytest.fixture
def gpu_image(docker):
    if docker_run(docker, "image", "inspect", GPU_IMAGE, check=False).returncode != 0:
        pytest.skip(f"{GPU_IMAGE} is not built here: `make image-gpu` builds it")
    return GPU_IMAGE


def test_gpu_image_without_a_gpu_serves_on_the_cpu_with_device_auto(container_factory, gpu_image):
    container = container_factory("gpu-auto", image=gpu_image, env={"MHASERVE_DEVICE": "auto"})
    container.wait_ready(within_s=120)
    status, body = container.request("/v1/embed", {"inputs": ["hello"]})
    assert status == 200, body
    assert "CPUExecutionProvider" in container.logs()


def test_gpu_image_without_a_gpu_refuses_device_cuda_clearly(container_factory, gpu_image):
    container = container_factory("gpu-cuda", image=gpu_image, args=("--device", "cuda"))
    deadline = time.monotonic() + 120
    while container.state()["Running"] and time.monotonic() < deadline:
        time.sleep(0.5)
    state = container.state()
    assert not state["Running"] and state["ExitCode"] != 0, state
    assert "--device cuda: no usable CUDA GPU" in container.logs()
