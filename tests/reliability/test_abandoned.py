"""Promise 4: work whose client disconnected, cancelled or ran out of deadline while queued is
dropped before inference (mhaserve_dropped_sequences_total says how many); the rest is unaffected.
Dropping is the engine's, whatever computes: the server runs `--backend fake` with batches of one
that take 20 ms each, so the queue's 160 blockers take 3.2 s on any machine, and no CPU."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx

from protos.mhaserve.v1 import encoder_pb2 as pb
from service.backends.fake import FAKE_SPEC
from tests.reliability.load import Senders, summarise
from tests.support.http import scrape
from tests.support.prometheus import metric_value

MODEL = FAKE_SPEC.name
LONG = "A considerably longer sentence that goes on and on, so that every batch takes a while. " * 8
BLOCKERS = 160  # one sequence per batch of 20 ms: the queue drains for 3.2 s


async def metrics_async(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def computed_sequences(text: str) -> float:
    return metric_value(text, "mhaserve_batch_size_sum")


def dropped(text: str, reason: str) -> float:
    return metric_value(text, "mhaserve_dropped_sequences_total", {"reason": reason})


async def send_and_hang_up(port: int, path: str, body: dict, after_s: float) -> None:
    """A client that sends a whole request, then closes its connection without waiting."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.close()


async def cancel_grpc_call(target: str, text: str, after_s: float) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        embed = channel.unary_unary(
            "/mhaserve.v1.Encoder/Embed",
            request_serializer=pb.EmbedRequest.SerializeToString,
            response_deserializer=pb.EmbedResponse.FromString,
        )
        call = embed(pb.EmbedRequest(inputs=[text]), timeout=60)
        await asyncio.sleep(after_s)
        call.cancel()


def test_abandoned_requests_are_dropped_before_inference_and_the_rest_are_answered(start_fake_server, fake_reference):
    server = start_fake_server("--max-batch-size", "1", "--max-wait-ms", "0", "--fake-batch-ms", "20")
    before = scrape(server)

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            blocker = asyncio.create_task(client.post("/v1/embed", json={"inputs": [LONG] * BLOCKERS}))
            # until the blocker's sequences are queued (a fixed sleep raced a fast machine's queue)
            while metric_value(await metrics_async(client), "mhaserve_queue_depth") == 0:
                assert not blocker.done(), blocker
                await asyncio.sleep(0.02)
            kserve_body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["gone away"]}]}
            abandon = [
                send_and_hang_up(server.http_port, "/v1/embed", {"inputs": [f"gone {i}"]}, 0.3) for i in range(8)
            ]
            abandon += [
                send_and_hang_up(server.http_port, f"/v2/models/{MODEL}/infer", kserve_body, 0.3) for _ in range(4)
            ]
            abandon += [cancel_grpc_call(server.grpc_target, f"cancelled {i}", 0.3) for i in range(4)]
            late = [client.post("/v1/embed", json={"inputs": [f"in a hurry {i}"], "timeout_s": 0.4}) for i in range(4)]
            senders = Senders(server, patience_s=120, grpc_timeout_s=120, model=MODEL)
            patient = [senders.send(i, ("rest", "grpc", "kserve")[i % 3], f"patient {i}") for i in range(6)]
            results = await asyncio.gather(*abandon, asyncio.gather(*late), asyncio.gather(*patient))
            await senders.close()
            return await blocker, results[-2], results[-1]

    started = time.monotonic()
    blocker, late, patient = asyncio.run(scenario())
    assert blocker.status_code == 200
    for response in late:
        assert response.status_code == 504 and response.json()["error"]["type"] == "deadline_exceeded"
    assert [o.status for o in patient] == ["200"] * 6
    assert summarise("abandoned", patient, fake_reference).correct == 6
    while metric_value(scrape(server), "mhaserve_queue_depth") > 0:
        assert time.monotonic() - started < 120
        time.sleep(0.2)
    after = scrape(server)
    assert dropped(after, "cancelled") - dropped(before, "cancelled") == 16  # 8 REST + 4 KServe + 4 gRPC
    assert dropped(after, "deadline") - dropped(before, "deadline") == 4
    # only the blocker's sequences and the patient requests were computed
    assert computed_sequences(after) - computed_sequences(before) == BLOCKERS + 6
