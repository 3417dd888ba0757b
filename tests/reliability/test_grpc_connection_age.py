"""--grpc-max-connection-age-s: the server asks clients to reconnect (GOAWAY) once a connection is
that old, so a channel balancing over a headless Service re-resolves and sees new replicas; calls
in flight finish within the grace, and the client loses none. Connections are the transport's
own: the server runs `--backend fake`, and each answer is checked against the fake's."""

from __future__ import annotations

import threading
import time

import grpc

from protos.mhaserve.v1 import encoder_pb2 as pb
from tests.support.fake import assert_matches


def test_old_connections_are_replaced_without_losing_a_call(start_fake_server, fake_reference):
    server = start_fake_server("--grpc-max-connection-age-s", "1", "--grpc-max-connection-age-grace-s", "2")
    states: list[grpc.ChannelConnectivity] = []
    lock = threading.Lock()

    def record(state: grpc.ChannelConnectivity) -> None:
        with lock:
            states.append(state)

    with grpc.insecure_channel(server.grpc_target) as channel:
        channel.subscribe(record, try_to_connect=True)
        embed = channel.unary_unary(
            "/mhaserve.v1.Encoder/Embed",
            request_serializer=pb.EmbedRequest.SerializeToString,
            response_deserializer=pb.EmbedResponse.FromString,
        )
        deadline, calls = time.monotonic() + 4.5, 0
        while time.monotonic() < deadline:
            text = f"call {calls} over an aging connection"
            answer = embed(pb.EmbedRequest(inputs=[text]), timeout=30)
            assert_matches(answer.embeddings[0].values, fake_reference.embedding(text))
            calls += 1
        channel.unsubscribe(record)
    with lock:
        ready_again = sum(1 for s in states if s is grpc.ChannelConnectivity.READY)
    assert calls > 20
    assert ready_again >= 3, states  # connected, and reconnected after each GOAWAY
