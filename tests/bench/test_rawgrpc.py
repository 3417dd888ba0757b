"""RawGrpc, the flood's gRPC load generator, against a real server process (`--backend fake`: what
is checked is the wire): it must read every answer the way grpcio's generated stubs do, or the
reliability table would count the wrong things."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from bench.rawgrpc import RawGrpc, hpack_int
from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from service.errors import ERROR_TYPE_METADATA
from tests.support.http import post, scrape
from tests.support.prometheus import metric_value

EMBED = "/mhaserve.v1.Encoder/Embed"
TEXTS = ["A man is playing a guitar.", "Ein Satz auf Deutsch, mit Umlauten: äöü."]


def call(server, path: str, message: bytes, **kwargs):
    async def one():
        client = RawGrpc("127.0.0.1", server.grpc_port, timeout_s=30, patience_s=60, **kwargs)
        try:
            return await client.unary(path, message)
        finally:
            await client.close()

    return asyncio.run(one())


def test_an_answer_is_the_one_the_generated_stub_gets(fake_server):
    request = pb.EmbedRequest(inputs=TEXTS)
    reply = call(fake_server, EMBED, request.SerializeToString())
    assert (reply.code, reply.message) == (0, "")
    raw = pb.EmbedResponse.FromString(reply.payload)
    with grpc.insecure_channel(fake_server.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel).Embed(request, timeout=30)
    assert len(raw.embeddings) == len(stub.embeddings) == 2
    for a, b in zip(raw.embeddings, stub.embeddings, strict=True):
        np.testing.assert_array_equal(np.asarray(a.values), np.asarray(b.values))


def test_an_error_keeps_its_code_its_message_and_the_error_type_trailer(fake_server):
    reply = call(fake_server, EMBED, pb.EmbedRequest(inputs=[""]).SerializeToString())
    assert reply.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "empty string" in reply.message  # percent-decoded
    assert reply.trailers[ERROR_TYPE_METADATA] == "invalid_request"
    assert reply.payload is None


def test_a_message_over_one_frame_is_refused_before_sending():
    async def too_big():
        client = RawGrpc("127.0.0.1", 1, timeout_s=1, patience_s=1)  # nothing listens: nothing may be sent
        with pytest.raises(ValueError, match="one DATA frame"):
            await client.unary(EMBED, b"x" * 20_000)

    asyncio.run(too_big())


def test_an_unknown_method_is_unimplemented(fake_server):
    reply = call(fake_server, "/mhaserve.v1.Encoder/NoSuchMethod", b"")
    assert reply.code == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_a_full_queue_is_resource_exhausted(start_fake_server):
    """One request waits in the queue for company (--batch-wait always) and fills it, so the next is refused."""
    blocker = "a request that waits in the queue for company"
    server = start_fake_server(
        "--batch-wait", "always", "--max-wait-ms", "600000", "--max-queue-tokens", str(len(blocker.split()) + 2),
        "--shutdown-grace-s", "1",
    )  # fmt: skip
    waiting = threading.Thread(target=post, args=(server, "/v1/embed", {"inputs": [blocker]}), daemon=True)
    waiting.start()
    deadline = time.monotonic() + 10
    while metric_value(scrape(server), "mhaserve_queue_depth") == 0:
        assert time.monotonic() < deadline, "the blocking request never reached the queue"
        time.sleep(0.05)
    reply = call(server, EMBED, pb.EmbedRequest(inputs=["a man"]).SerializeToString())
    assert reply.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], reply
    assert reply.trailers[ERROR_TYPE_METADATA] == "overloaded"


def test_many_calls_at_once_each_get_their_own_answer(fake_server):
    async def many():
        client = RawGrpc("127.0.0.1", fake_server.grpc_port, timeout_s=30, patience_s=60)
        try:
            texts = [f"sentence number {i}" for i in range(200)]
            replies = await asyncio.gather(
                *(client.unary(EMBED, pb.EmbedRequest(inputs=[t], id=t).SerializeToString()) for t in texts)
            )
            return texts, replies
        finally:
            await client.close()

    texts, replies = asyncio.run(many())
    assert [pb.EmbedResponse.FromString(r.payload).id for r in replies] == texts


def test_calls_go_on_across_the_servers_goaway(start_fake_server):
    """The server ends connections after --grpc-max-connection-age-s; the client reconnects."""
    server = start_fake_server("--grpc-max-connection-age-s", "1", "--grpc-max-connection-age-grace-s", "2")

    async def across():
        client = RawGrpc("127.0.0.1", server.grpc_port, timeout_s=30, patience_s=60)
        codes = []
        try:
            for _ in range(40):
                codes.append((await client.unary(EMBED, pb.EmbedRequest(inputs=TEXTS).SerializeToString())).code)
                await asyncio.sleep(0.1)
            return codes, client.connections_opened
        finally:
            await client.close()

    codes, connections = asyncio.run(across())
    assert codes == [0] * 40
    assert connections >= 3  # 4 s of calls on connections that live 1 s


def test_a_call_without_an_answer_raises_timeout_after_the_patience():
    async def silent():
        done = asyncio.Event()

        async def never_answer(reader, writer):
            await reader.read(1 << 20)  # takes the call, answers nothing
            await done.wait()
            writer.close()

        listener = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        client = RawGrpc("127.0.0.1", port, timeout_s=1, patience_s=1)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.unary(EMBED, b""), 10)
        finally:
            await client.close()
            done.set()
            listener.close()
            await listener.wait_closed()

    asyncio.run(silent())


@pytest.mark.parametrize(
    ("value", "bits", "encoded"),
    [(10, 5, b"\x0a"), (1337, 5, b"\x1f\x9a\x0a"), (127, 7, b"\x7f\x00")],  # RFC 7541 C.1, and the prefix's limit
)
def test_hpack_integers_follow_rfc_7541(value, bits, encoded):
    assert hpack_int(value, bits) == encoded
