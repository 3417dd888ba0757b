"""Promise 10: --tls-cert/--tls-key serve HTTPS and gRPC over TLS; --tls-client-ca requires client
certificates on gRPC (mTLS). Certificates are made by the test (tests/reliability/conftest.py).
TLS is the transports' own: the servers here run `--backend fake`, and their vectors are checked
against the fake's."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from protos.mhaserve.v1 import encoder_pb2 as pb
from service.backends.fake import FAKE_SPEC
from tests.support.fake import assert_matches
from tests.support.server import ARTIFACT, REPO, ServerProcess, launch

TEXT = "Attention is all you need."
EMBED = "/mhaserve.v1.Encoder/Embed"
MISMATCH = "not a certificate and its matching private key"
KSERVE_INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}


def trust(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def wait_ready_over_tls(server: ServerProcess, ca: Path, timeout_s: float = 90) -> str:
    url = f"https://127.0.0.1:{server.http_port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health/ready", verify=trust(ca), timeout=2).status_code == 200:
                return url
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(server.log()[-3000:])


def embed(channel: grpc.Channel, timeout: float = 10) -> pb.EmbedResponse:
    call = channel.unary_unary(
        EMBED, request_serializer=pb.EmbedRequest.SerializeToString, response_deserializer=pb.EmbedResponse.FromString
    )
    return call(pb.EmbedRequest(inputs=[TEXT]), timeout=timeout)


@pytest.fixture(scope="module")
def tls_server(certificates):
    server = launch(
        "--tls-cert", str(certificates.server.cert), "--tls-key", str(certificates.server.key),
        model_dir=None, wait_ready=False,
    )  # fmt: skip
    url = wait_ready_over_tls(server, certificates.ca.cert)
    yield server, url
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(certificates):
    server = launch(
        "--tls-cert", str(certificates.server.cert),
        "--tls-key", str(certificates.server.key),
        "--tls-client-ca", str(certificates.ca.cert),
        model_dir=None, wait_ready=False,
    )  # fmt: skip
    url = wait_ready_over_tls(server, certificates.ca.cert)
    yield server, url
    server.stop()


def test_https_serves_rest_and_kserve_with_the_right_vectors(tls_server, certificates, fake_reference):
    server, url = tls_server
    ca = trust(certificates.ca.cert)
    rest = httpx.post(url + "/v1/embed", json={"inputs": [TEXT]}, verify=ca, timeout=30)
    assert rest.status_code == 200
    assert_matches(rest.json()["embeddings"][0], fake_reference.embedding(TEXT))
    kserve = httpx.post(f"{url}/v2/models/{FAKE_SPEC.name}/infer", json=KSERVE_INFER, verify=ca, timeout=30)
    assert kserve.status_code == 200
    assert_matches(kserve.json()["outputs"][0]["data"], fake_reference.embedding(TEXT))
    assert "listening: REST https://" in server.log()


def test_plaintext_http_is_refused_when_tls_is_on(tls_server):
    server, _ = tls_server
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{server.http_port}/v1/embed", json={"inputs": [TEXT]}, timeout=10)


def test_a_client_that_does_not_trust_the_server_certificate_stops(tls_server):
    _, url = tls_server
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/health/live", timeout=10)  # the system's CAs: our test CA is not among them


def test_grpc_over_tls_works_and_plaintext_grpc_is_refused(tls_server, certificates, fake_reference):
    server, _ = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates.ca.cert_bytes)
    with grpc.secure_channel(server.grpc_target, credentials) as channel:
        assert_matches(embed(channel).embeddings[0].values, fake_reference.embedding(TEXT))
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as refused:
        embed(channel, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_lets_in_the_client_certificate_of_the_trusted_ca_only(mtls_server, certificates, fake_reference):
    server, _ = mtls_server
    trusted = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.cert_bytes,
        private_key=certificates.client.key_bytes,
        certificate_chain=certificates.client.cert_bytes,
    )
    with grpc.secure_channel(server.grpc_target, trusted) as channel:
        assert_matches(embed(channel).embeddings[0].values, fake_reference.embedding(TEXT))

    stranger = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.cert_bytes,
        private_key=certificates.stranger.key_bytes,
        certificate_chain=certificates.stranger.cert_bytes,
    )
    anonymous = grpc.ssl_channel_credentials(root_certificates=certificates.ca.cert_bytes)
    for credentials in (stranger, anonymous):
        with grpc.secure_channel(server.grpc_target, credentials) as channel, pytest.raises(grpc.RpcError) as refused:
            embed(channel, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_on_grpc_leaves_https_open_to_probes_without_a_client_certificate(mtls_server, certificates):
    _, url = mtls_server
    assert httpx.get(url + "/health/ready", verify=trust(certificates.ca.cert), timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tls-cert", "{server.cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{server.cert}", "--tls-key", "{client.key}"], MISMATCH),
        (["--tls-cert", "{server.cert}", "--tls-key", "/nonexistent/tls.key"], "--tls-key: cannot read"),
        (["--tls-cert", "{server.key}", "--tls-key", "{server.key}"], MISMATCH),
        (["--tls-client-ca", "{ca.cert}"], "--tls-client-ca needs --tls-cert"),
        (["--tls-cert", "{server.cert}", "--tls-key", "{server.key}", "--tls-client-ca", str(REPO / "README.md")],
         "--tls-client-ca: "),
    ],
)  # fmt: skip
def test_bad_tls_files_stop_the_start_with_the_file_named(certificates, flags, says):
    args = [flag.format(server=certificates.server, client=certificates.client, ca=certificates.ca) for flag in flags]
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--model-dir", str(ARTIFACT), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert result.stderr.startswith("mhaserve: error: ")
