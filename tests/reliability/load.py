"""Load over REST, gRPC and KServe v2 at once, each answer judged against in-process onnxruntime.

A request's outcome is its own answer (checked later, in batches, against the reference
graph), an explicit refusal (429 / 503 / 504 or their gRPC codes), another error, or
"lost": no answer at all within the client's patience (a hang, a reset connection).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench.rawgrpc import RawGrpc
from protos.mhaserve.v1 import encoder_pb2 as pb
from tests.support.decode import decode_float32
from tests.support.fake import FakeReference
from tests.support.http import RawHttp
from tests.support.prometheus import samples
from tests.support.reference import Reference
from tests.support.server import REPO, ServerProcess

MODEL = "all-minilm-l6-v2"
TRANSPORTS = ("rest", "grpc", "kserve")
REFUSALS = ("429", "503", "504")
CLOSED = "closed"  # the port no longer accepts connections (the server has stopped): nothing was accepted
GRPC_AS_HTTP = {
    grpc.StatusCode.OK: "200",
    grpc.StatusCode.INVALID_ARGUMENT: "422",
    grpc.StatusCode.UNAUTHENTICATED: "401",
    grpc.StatusCode.NOT_FOUND: "404",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "429",
    grpc.StatusCode.UNAVAILABLE: "503",
    grpc.StatusCode.DEADLINE_EXCEEDED: "504",
    grpc.StatusCode.INTERNAL: "500",
}
GRPC_NAMES = {code.name: status for code, status in GRPC_AS_HTTP.items()} | {"UNKNOWN": "500", "CANCELLED": "499"}
RESULTS = REPO / "test-artifacts" / "reliability" / "results.jsonl"
SENTENCES = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
    "Ein Satz auf Deutsch, mit Umlauten: äöü.",
    "A considerably longer sentence that goes on and on, so that batches hold inputs of different lengths.",
)


def unique_text(index: int) -> str:
    """A different text for every request, so a vector given to the wrong request shows."""
    return f"{SENTENCES[index % len(SENTENCES)]} (request {index})"


@dataclass
class Outcome:
    index: int
    transport: str
    text: str
    status: str  # "200", "429", "503", "504", "500", ... or "lost"
    seconds: float
    vector: np.ndarray | None = None
    detail: str = ""
    sent_at: float = 0.0  # time.monotonic() when it was sent


EMBED = "/mhaserve.v1.Encoder/Embed"


class Senders:
    """One embed call per transport, each returning an Outcome; never raises.

    gRPC goes through grpcio's generated-stub machinery, or with raw_grpc through RawGrpc, a
    minimal HTTP/2 client: a flood's load generator shares the server's cores, and grpcio's
    client would take 0.4 of them (RawHttp stands in for httpx for the same reason)."""

    def __init__(
        self,
        server: ServerProcess,
        *,
        patience_s: float,
        grpc_timeout_s: float,
        raw_grpc: bool = False,
        model: str = MODEL,
    ):
        self.model = model  # the name KServe's route takes
        self.http = RawHttp("127.0.0.1", server.http_port, patience_s)
        self.raw_grpc = None
        if raw_grpc:
            self.raw_grpc = RawGrpc("127.0.0.1", server.grpc_port, timeout_s=grpc_timeout_s, patience_s=patience_s)
        self.channel = grpc.aio.insecure_channel(server.grpc_target)
        self.embed_rpc = self.channel.unary_unary(
            EMBED,
            request_serializer=pb.EmbedRequest.SerializeToString,
            response_deserializer=pb.EmbedResponse.FromString,
        )
        self.grpc_timeout_s = grpc_timeout_s

    async def close(self) -> None:
        await self.http.close()
        await self.channel.close()
        if self.raw_grpc is not None:
            await self.raw_grpc.close()

    async def send(self, index: int, transport: str, text: str) -> Outcome:
        sent_at, started = time.monotonic(), time.perf_counter()
        try:
            if transport == "rest":
                status, vector, detail = await self._rest(text)
            elif transport == "grpc":
                status, vector, detail = await self._grpc(text)
            else:
                status, vector, detail = await self._kserve(text)
        except ConnectionRefusedError as exc:
            status, vector, detail = CLOSED, None, str(exc)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:  # no answer: timeout, reset
            status, vector, detail = "lost", None, f"{type(exc).__name__}: {exc}"
        return Outcome(index, transport, text, status, time.perf_counter() - started, vector, detail, sent_at)

    async def _rest(self, text: str) -> tuple[str, np.ndarray | None, str]:
        status, headers, body = await self.http.post("/v1/embed", {"inputs": [text], "encoding": "base64"})
        if status != 200:
            return str(status), None, refusal_detail(headers, body)
        data = json.loads(body)["embeddings"][0]
        return "200", decode_float32(data), ""

    async def _grpc(self, text: str) -> tuple[str, np.ndarray | None, str]:
        if self.raw_grpc is not None:
            reply = await self.raw_grpc.unary(EMBED, pb.EmbedRequest(inputs=[text]).SerializeToString())
            if reply.status is not grpc.StatusCode.OK:
                return GRPC_AS_HTTP.get(reply.status, reply.status.name), None, reply.message
            answer = pb.EmbedResponse.FromString(reply.payload)
            return "200", np.asarray(answer.embeddings[0].values, dtype=np.float32), ""
        try:
            answer = await self.embed_rpc(pb.EmbedRequest(inputs=[text]), timeout=self.grpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            return GRPC_AS_HTTP.get(exc.code(), exc.code().name), None, exc.details() or ""
        return "200", np.asarray(answer.embeddings[0].values, dtype=np.float32), ""

    async def _kserve(self, text: str) -> tuple[str, np.ndarray | None, str]:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        status, headers, raw = await self.http.post(f"/v2/models/{self.model}/infer", body)
        if status != 200:
            return str(status), None, refusal_detail(headers, raw)
        (output,) = json.loads(raw)["outputs"]
        return "200", np.asarray(output["data"], dtype=np.float32), ""


def refusal_detail(headers: dict[str, str], body: bytes) -> str:
    retry_after = headers.get("retry-after")
    text = body[:400].decode(errors="replace")
    return f"retry-after={retry_after} {text}" if retry_after else text


async def open_loop(
    senders: Senders,
    rate: float,
    duration_s: float,
    first_index: int = 0,
    distinct: int | None = None,
    transports: tuple[str, ...] = TRANSPORTS,
) -> list[Outcome]:
    """Requests at a fixed rate whatever the answers do (open loop), round-robin over the transports.

    distinct: cycle through that many different texts (long runs: the reference then computes
    each once, not once per request; a vector given to the wrong request still shows)."""
    loop = asyncio.get_running_loop()
    start, tasks = loop.time(), []
    # the client's own cyclic garbage collector would pause its event loop for tens of ms over the
    # tens of thousands of objects a long run holds, and every request in flight would wear that
    # pause as server latency: it runs after the load instead (as timeit does)
    gc.disable()
    try:
        for n in range(int(rate * duration_s)):
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            index = first_index + n
            text = unique_text(index if distinct is None else index % distinct)
            tasks.append(asyncio.create_task(senders.send(index, transports[index % len(transports)], text)))
        return list(await asyncio.gather(*tasks))
    finally:
        gc.enable()
        gc.collect()


async def measure_capacity(
    senders: Senders, duration_s: float, clients: int = 96, transports: tuple[str, ...] = TRANSPORTS
) -> float:
    """Answered requests per second with enough callers to keep every batch full (closed loop)."""
    started = time.perf_counter()
    outcomes = await closed_loop(senders, clients, duration_s, first_index=10**8, transports=transports)
    return sum(o.status == "200" for o in outcomes) / (time.perf_counter() - started)


async def closed_loop(
    senders: Senders, clients: int, duration_s: float, first_index: int = 0, transports: tuple[str, ...] = TRANSPORTS
) -> list[Outcome]:
    """`clients` callers, each sending its next request when the last is answered."""
    deadline = time.perf_counter() + duration_s
    outcomes: list[Outcome] = []
    counter = iter(range(first_index, first_index + 10**9))

    async def caller() -> None:
        while time.perf_counter() < deadline:
            index = next(counter)
            outcomes.append(await senders.send(index, transports[index % len(transports)], unique_text(index)))

    await asyncio.gather(*(caller() for _ in range(clients)))
    return outcomes


@dataclass
class Summary:
    """One row of the reliability table."""

    scenario: str
    sent: int
    correct: int
    wrong: int
    refused: dict[str, int]
    lost: int
    server_errors: int  # 5xx other than 503 / 504, and gRPC INTERNAL or UNKNOWN
    other: dict[str, int]
    refusal_p99_ms: float
    answered_p99_s: float
    refusal_p50_ms: float = 0.0
    max_rss_mb: float = 0.0
    notes: str = ""
    examples: list[str] = field(default_factory=list)

    def record(self) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        row = {k: v for k, v in self.__dict__.items() if k != "examples"}
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")


def summarise(scenario: str, outcomes: list[Outcome], reference: Reference | FakeReference) -> Summary:
    """The table row of `outcomes`, each answer checked against `reference` (the served model's)."""
    answered = [o for o in outcomes if o.status == "200"]
    texts = sorted({o.text for o in answered}, key=len)  # each text once, similar lengths together
    expected = dict(zip(texts, reference.embeddings(texts), strict=True))
    wrong = [o for o in answered if o.vector is None or not reference.close(o.vector, expected[o.text])]
    codes = Counter(o.status for o in outcomes if o.status != "200")
    refused = {code: codes[code] for code in (*REFUSALS, CLOSED) if codes[code]}
    explicit = ("200", *REFUSALS, CLOSED)
    server_errors = sum(n for code, n in codes.items() if code not in explicit and code[0] in "5U")
    other = {c: n for c, n in codes.items() if c not in explicit and c != "lost" and c[0] not in "5U"}
    refusal_ms = [o.seconds * 1000 for o in outcomes if o.status in ("429", "503")]
    examples = [f"{o.transport} #{o.index}: {o.status} {o.detail[:160]}" for o in outcomes if o.status not in explicit]
    return Summary(
        scenario=scenario,
        sent=len(outcomes),
        correct=len(answered) - len(wrong),
        wrong=len(wrong),
        refused=refused,
        lost=codes["lost"],
        server_errors=server_errors,
        other=other,
        refusal_p99_ms=float(np.percentile(refusal_ms, 99)) if refusal_ms else 0.0,
        answered_p99_s=float(np.percentile([o.seconds for o in answered], 99)) if answered else 0.0,
        refusal_p50_ms=float(np.percentile(refusal_ms, 50)) if refusal_ms else 0.0,
        examples=examples[:5],
    )


def summary_from_metrics(scenario: str, metrics_text: str) -> Summary:
    """A table row from the server's own request counter: every request it answered, by code."""
    codes: Counter[str] = Counter()
    for sample in samples(metrics_text, "mhaserve_requests_total"):
        code = sample.labels["code"]
        codes[GRPC_NAMES.get(code, code)] += int(sample.value)
    refused = {code: codes[code] for code in REFUSALS if codes[code]}
    server_errors = sum(n for code, n in codes.items() if code[0] == "5" and code not in REFUSALS)
    other = {c: n for c, n in codes.items() if c[0] == "4" and c not in REFUSALS}
    return Summary(
        scenario=scenario,
        sent=sum(codes.values()),
        correct=codes["200"],
        wrong=0,
        refused=refused,
        lost=0,
        server_errors=server_errors,
        other=other,
        refusal_p99_ms=0.0,
        answered_p99_s=0.0,
        notes="counted by the server: 200 = answered (content checked by each test)",
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of a process so far (the server's, or the load generator's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler:
    """Samples a process's resident memory every `interval_s` on a thread, while in a `with` block."""

    def __init__(self, pid: int, interval_s: float):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._started, rss_mb(self.pid)))
            if self._stop.wait(self.interval_s):
                return

    @property
    def peak_mb(self) -> float:
        return max(mb for _, mb in self.samples)
