"""Replicas of the image behind HAProxy, replaced one at a time under load: `make test-rollout`
(pytest -m rollout).

Two containers of mhaserve:cpu, run as the pods run them (read-only root, the image's user, the
manifests' settings, a mounted key file), serve behind HAProxy (tests/deploy/balancer.py), which
checks /health/ready as the manifests' readinessProbe does. An open-loop load of REST and gRPC at
half the replicas' measured capacity runs throughout, every answer checked against in-process
onnxruntime on the image's own model. Each replica in turn is replaced as the Deployment's
RollingUpdate (maxSurge 1, maxUnavailable 0) does it: a new container, ready, is taken into
rotation by the balancer, then the old one gets `docker stop` with the pod's
terminationGracePeriodSeconds.

The new containers start under the load but before the steady window, held out of rotation
(HAProxy's maintenance state) until their turn. A starting replica's interpreter and model load
cost the serving ones CPU that no container quota holds back on this machine's two cores (the
engine's and the kernel's work for it); in a cluster a surge pod starts on cores of its own. Their
start-up is reported as a phase of its own, and the rollout's latency is judged on what a rollout
does to the serving replicas: the balancer's membership changing and the old replicas draining.
What clients see is asserted (nothing lost, wrong, 5xx or UNAVAILABLE; out of rotation within the
probe's reach); the rollout's p99 against the steady p99 is a performance figure, printed in the
table against its target as the benchmarks print theirs (docs/deploy.md has the day's runs).
Then one replica is killed (`docker kill`) under load, to count what a crash costs. The figures
print as one table, written with each container's log to test-artifacts/rollout/. Without docker
or haproxy the test skips and says why (in CI it fails); it stops itself within BUDGET_S.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import yaml

from artifact.manifest import Artifact
from bench.loadgen import RawHttp
from protos.mhaserve.v1 import encoder_pb2 as pb
from tests.deploy.balancer import REQUEST_ID, Balancer, ReadinessCheck, Replica, haproxy_binary
from tests.deploy.conftest import K8S, REPO
from tests.deploy.containers import Container, docker_run, free_port, start, unavailable
from tests.reliability.load import Outcome, unique_text
from tests.support.decode import decode_float32
from tests.support.reference import Reference

pytestmark = pytest.mark.rollout

BUDGET_S = 285.0  # the whole test, start-up and checks included: it must end within 5 minutes
LOAD_OF_CAPACITY = 0.5
STEADY_S = 30.0
SETTLE_S = 5.0  # after the surge replicas are ready, before the steady window
AFTER_KILL_S = 5.0  # load goes on this long after the balancer took the killed replica out
NEW_REPLICA_READY_WITHIN_S = 90.0
DISTINCT_TEXTS = 1000  # the load cycles through these: each reference vector is computed once
API_KEY = "rollout-test-key"
# A new pod loads on cores of its own; here every replica shares the machine's, so one that is
# loading is held to a quarter of a core (docker --cpus) until it is ready, and then to none
LOADING_CPUS = 0.25
SURGE = (("r1", "r3"), ("r2", "r4"))  # (old, new), in the order they are replaced
P99_RATIO_LIMIT = 2.0  # the target for rollout p99 / steady p99, printed with the table
TABLE = REPO / "test-artifacts" / "rollout" / "table.md"
EMBED = "/mhaserve.v1.Encoder/Embed"


# what the manifests declare ----------------------------------------------------------------------


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass(frozen=True)
class Pod:
    """The cpu variant's pod, as deploy/k8s declares it (base and overlay, read directly)."""

    env: dict[str, str]
    readiness: ReadinessCheck
    termination_grace_s: int
    keys_mount: str  # where the API key Secret is mounted

    @property
    def delay_s(self) -> float:
        return float(self.env["MHASERVE_SHUTDOWN_DELAY_S"])

    @property
    def grace_s(self) -> float:
        return float(self.env["MHASERVE_SHUTDOWN_GRACE_S"])


def cpu_pod() -> Pod:
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = env_file(K8S / "base" / "settings.env") | env_file(K8S / "overlays" / "cpu" / "settings.env")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    return Pod(
        env=env,
        readiness=ReadinessCheck.of_probe(container["readinessProbe"]),
        termination_grace_s=spec["terminationGracePeriodSeconds"],
        keys_mount=mounts["api-keys"],
    )


# the load ------------------------------------------------------------------------------------------


class Senders:
    """One embed call through the balancer per transport, each an Outcome; never raises.
    REST through RawHttp (keep-alive, little client CPU), gRPC through grpcio's own client."""

    def __init__(self, balancer: Balancer, patience_s: float = 60.0):
        self.http = RawHttp("127.0.0.1", balancer.rest_port, patience_s)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{balancer.grpc_port}")
        self.embed = self.channel.unary_unary(
            EMBED,
            request_serializer=pb.EmbedRequest.SerializeToString,
            response_deserializer=pb.EmbedResponse.FromString,
        )
        self.patience_s = patience_s

    async def close(self) -> None:
        await self.http.close()
        await self.channel.close()

    async def send(self, index: int, transport: str, text: str) -> Outcome:
        sent_at, started = time.monotonic(), time.perf_counter()
        vector, detail = None, ""
        try:
            if transport == "rest":
                headers = {REQUEST_ID: str(index), "authorization": f"Bearer {API_KEY}"}
                code, _, body = await self.http.post("/v1/embed", {"inputs": [text], "encoding": "base64"}, headers)
                status = str(code)
                if code == 200:
                    vector = decode_float32(orjson.loads(body)["embeddings"][0])
                else:
                    detail = body[:300].decode(errors="replace")
            else:
                metadata = ((REQUEST_ID, str(index)), ("authorization", f"Bearer {API_KEY}"))
                try:
                    answer = await self.embed(
                        pb.EmbedRequest(inputs=[text]), metadata=metadata, timeout=self.patience_s
                    )
                    status, vector = "200", np.asarray(answer.embeddings[0].values, dtype=np.float32)
                except grpc.aio.AioRpcError as exc:
                    status, detail = exc.code().name, exc.details() or ""
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            status, detail = "lost", f"{type(exc).__name__}: {exc}"
        return Outcome(index, transport, text, status, time.perf_counter() - started, vector, detail, sent_at)


async def closed_loop_rate(senders: Senders, clients: int, duration_s: float) -> float:
    """Answered requests per second with `clients` callers each waiting for its answer."""
    deadline = time.monotonic() + duration_s
    answered, counter = 0, iter(range(10**8, 2 * 10**8))

    async def caller() -> None:
        nonlocal answered
        while time.monotonic() < deadline:
            index = next(counter)
            outcome = await senders.send(index, ("rest", "grpc")[index % 2], unique_text(index))
            answered += outcome.status == "200"

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return answered / (time.monotonic() - started)


async def open_loop(senders: Senders, rate: float, stop: asyncio.Event) -> list[Outcome]:
    """Requests at a fixed rate, REST and gRPC in turn, until `stop`, whatever the answers do."""
    loop = asyncio.get_running_loop()
    start_at, tasks, n = loop.time(), [], 0
    gc.disable()  # the client's collector would pause its loop, and every request would wear the pause
    try:
        while not stop.is_set():
            delay = start_at + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            text = unique_text(n % DISTINCT_TEXTS)
            tasks.append(asyncio.create_task(senders.send(n, ("rest", "grpc")[n % 2], text)))
            n += 1
        return list(await asyncio.gather(*tasks))
    finally:
        gc.enable()


# the replicas -------------------------------------------------------------------------------------


@dataclass
class StartUp:
    replica: str
    ready_s: float  # docker run -> its /health/ready answers 200


@dataclass
class Replacement:
    old: str
    new: str
    taken_in_s: float  # out of maintenance -> the balancer has the new one UP
    out_of_rotation_s: float  # SIGTERM -> the balancer has the old one DOWN
    exit_s: float  # SIGTERM -> the old container has exited
    exit_code: int
    stopping: tuple[float, float] = (0.0, 0.0)  # monotonic: SIGTERM -> the old one exited


@dataclass
class Kill:
    replica: str
    issued_at: float  # `docker kill` called
    killed_at: float  # `docker kill` returned: the replica is gone
    out_of_rotation_s: float  # the kill -> the balancer has it DOWN


@dataclass
class Run:
    capacity: float
    rate: float
    start_up: tuple[float, float]
    steady: tuple[float, float]
    rollout: tuple[float, float]
    start_ups: list[StartUp] = field(default_factory=list)
    replacements: list[Replacement] = field(default_factory=list)
    kill: Kill | None = None
    outcomes: list[Outcome] = field(default_factory=list)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        assert left > 0, "the rollout test ran out of its time budget"
        return left


class Fleet:
    """The replicas' containers, each in its balancer slot."""

    def __init__(self, docker: str, pod: Pod, keys_dir: Path, deadline: Deadline):
        self.docker, self.pod, self.keys_dir, self.deadline = docker, pod, keys_dir, deadline
        self.slots = {name: Replica(name, free_port(), free_port()) for name in ("r1", "r2", "r3", "r4")}
        self.containers: dict[str, Container] = {}
        # the cpu overlay sizes a pod for 4 cores; here up to three replicas share the machine's
        self.env = pod.env | {"MHASERVE_INFERENCE_WORKERS": "1", "MHASERVE_INTRA_OP_THREADS": "1"}
        self.env["MHASERVE_API_KEY_FILE"] = f"{pod.keys_mount}/keys"

    def start(self, name: str, cpus: float | None = None) -> Container:
        slot = self.slots[name]
        container = start(
            self.docker,
            f"mhaserve-rollout-{name}-{os.getpid()}",
            env=self.env,
            mounts=(f"{self.keys_dir}:{self.pod.keys_mount}:ro",),
            stop_timeout_s=self.pod.termination_grace_s,
            ports=(slot.http_port, slot.grpc_port),
            # a pod runs the image without Docker's HEALTHCHECK: the kubelet's probes (here the
            # balancer's checks) take its place, and each check would start a Python process
            run_args=("--no-healthcheck", *(("--cpus", str(cpus)) if cpus else ())),
        )
        self.containers[name] = container
        return container

    def unlimit(self, name: str) -> None:
        """The replica's CPU quota lifted: every core of the machine, as the serving ones have."""
        cores = str(os.cpu_count() or 1)
        docker_run(self.docker, "update", "--cpus", cores, self.containers[name].name)

    def remove_all(self) -> None:
        """Each container's log kept beside the table, then the containers removed."""
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        for name, container in self.containers.items():
            logs = docker_run(self.docker, "logs", "--timestamps", container.name, check=False, timeout=60)
            (TABLE.parent / f"{name}.log").write_text(logs.stdout + logs.stderr)
            docker_run(self.docker, "rm", "--force", container.name, check=False, timeout=60)


async def start_surge(fleet: Fleet) -> list[StartUp]:
    """The new replicas started side by side, each held to LOADING_CPUS until it is ready; the
    balancer keeps them in maintenance, out of rotation, until replace() takes them in."""

    def start_one(name: str) -> StartUp:
        container = fleet.start(name, LOADING_CPUS)
        ready_s = container.wait_ready(min(NEW_REPLICA_READY_WITHIN_S, fleet.deadline.left()))
        fleet.unlimit(name)
        return StartUp(name, ready_s)

    return list(await asyncio.gather(*(asyncio.to_thread(start_one, new) for _, new in SURGE)))


async def replace(fleet: Fleet, balancer: Balancer, old: str, new: str) -> Replacement:
    """Surge first: the new, ready replica in rotation, then the old one stopped as Kubernetes
    stops a pod."""
    started = time.monotonic()
    await asyncio.to_thread(balancer.command, f"set server rest/{new} state ready")
    up_at = await asyncio.to_thread(balancer.wait_for, new, "UP", min(30, fleet.deadline.left()), started)
    grace = fleet.pod.termination_grace_s
    sigterm_at = time.monotonic()
    stopped = await asyncio.to_thread(
        docker_run, fleet.docker, "stop", "--time", str(grace), fleet.containers[old].name, timeout=grace + 30
    )
    exited_at = time.monotonic()
    assert stopped.returncode == 0, stopped.stderr
    state = fleet.containers[old].state()
    down_at = balancer.first(old, "DOWN", sigterm_at)
    assert down_at is not None, f"{old} was never out of rotation: {balancer.transitions}"
    return Replacement(
        old=old,
        new=new,
        taken_in_s=up_at - started,
        out_of_rotation_s=down_at - sigterm_at,
        exit_s=exited_at - sigterm_at,
        exit_code=state["ExitCode"],
        stopping=(sigterm_at, exited_at),
    )


async def scenario(fleet: Fleet, balancer: Balancer) -> Run:
    senders = Senders(balancer)
    try:
        capacity = await closed_loop_rate(senders, clients=64, duration_s=5)
        rate = LOAD_OF_CAPACITY * capacity
        stop = asyncio.Event()
        load = asyncio.create_task(open_loop(senders, rate, stop))
        await asyncio.sleep(2.0)  # past the load's first second
        start_from = time.monotonic()
        start_ups = await start_surge(fleet)
        await asyncio.sleep(SETTLE_S)
        steady_from = time.monotonic()
        await asyncio.sleep(STEADY_S)
        rollout_from = time.monotonic()
        replacements = [await replace(fleet, balancer, old, new) for old, new in SURGE]
        rollout_to = time.monotonic()
        await asyncio.sleep(2.0)
        issued_at = time.monotonic()
        await asyncio.to_thread(docker_run, fleet.docker, "kill", fleet.containers["r3"].name)
        killed_at = time.monotonic()
        down_at = await asyncio.to_thread(balancer.wait_for, "r3", "DOWN", min(30, fleet.deadline.left()), killed_at)
        await asyncio.sleep(AFTER_KILL_S)
        stop.set()
        outcomes = await asyncio.wait_for(load, fleet.deadline.left())
    finally:
        await senders.close()
    run = Run(capacity, rate, (start_from, steady_from), (steady_from, rollout_from), (rollout_from, rollout_to))
    run.start_ups, run.replacements = start_ups, replacements
    run.kill = Kill("r3", issued_at, killed_at, down_at - killed_at)
    run.outcomes = outcomes
    return run


# judging ------------------------------------------------------------------------------------------

OVERLOADED = ("429", "RESOURCE_EXHAUSTED")


def describe(outcomes: list[Outcome], run: Run, logged: dict) -> str:
    """Each outcome with its time from the start of the rollout and what the balancer logged of it."""
    lines = []
    for o in outcomes[:20]:
        entry = logged.get(str(o.index))
        seen = f"{entry.server} {entry.status} {entry.termination}" if entry else "not logged"
        lines.append(
            f"{o.transport} #{o.index} sent at {o.sent_at - run.rollout[0]:+.2f} s, {o.seconds * 1000:.0f} ms: "
            f"{o.status} {o.detail[:100]!r}; balancer: {seen}"
        )
    marks = [(r.old, r.new) for r in run.replacements]
    return f"{len(outcomes)} requests, replacements {marks}:\n" + "\n".join(lines)


@dataclass
class Phase:
    name: str
    outcomes: list[Outcome]
    wrong: list[Outcome]

    @property
    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "200"]

    @property
    def failed(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes if o.status != "200")

    @property
    def refused_fraction(self) -> float:
        return sum(self.failed[code] for code in OVERLOADED) / max(len(self.outcomes), 1)

    def p(self, q: float) -> float:
        return float(np.percentile([o.seconds for o in self.answered], q)) * 1000 if self.answered else float("nan")


def wrong_answers(outcomes: list[Outcome], reference: Reference) -> set[int]:
    answered = [o for o in outcomes if o.status == "200"]
    texts = sorted({o.text for o in answered}, key=len)
    expected = dict(zip(texts, reference.embeddings(texts), strict=True))
    return {o.index for o in answered if o.vector is None or not np.allclose(o.vector, expected[o.text], atol=1e-5)}


def phases(run: Run, wrong: set[int]) -> dict[str, Phase]:
    assert run.kill is not None
    kill = run.kill.issued_at

    def within(lo: float, hi: float) -> list[Outcome]:
        return [o for o in run.outcomes if lo <= o.sent_at < hi]

    graceful = [o for o in run.outcomes if o.sent_at + o.seconds < kill]  # over before the kill
    made = {
        "start-up": within(*run.start_up),
        "steady": within(*run.steady),
        "rollout": within(*run.rollout),
        "graceful": graceful,
        "kill": [o for o in run.outcomes if o.sent_at + o.seconds >= kill],
    }
    return {name: Phase(name, got, [o for o in got if o.index in wrong]) for name, got in made.items()}


def machine() -> str:
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]  # fmt: skip
    return f"{os.cpu_count()}-core {models[0] if models else platform.processor() or platform.machine()}"


def table(run: Run, by_phase: dict[str, Phase], shares: dict[str, int], pod: Pod) -> str:
    assert run.kill is not None
    rows = []

    def row(scenario: str, phase: Phase, notes: str) -> None:
        answered = len(phase.answered) - len(phase.wrong)
        failed = ", ".join(f"{code}: {n}" for code, n in sorted(phase.failed.items())) or "0"
        rows.append(
            f"| {scenario} | {len(phase.outcomes)} | {answered} | {len(phase.wrong)} | {failed} | "
            f"{phase.p(50):.0f} / {phase.p(99):.0f} ms | {notes} |"
        )

    def p99_ms(window: tuple[float, float]) -> float:
        answered = [o.seconds for o in run.outcomes if window[0] <= o.sent_at < window[1] and o.status == "200"]
        return float(np.percentile(answered, 99)) * 1000 if answered else float("nan")

    starting = ", ".join(f"{s.replica} ready {s.ready_s:.1f} s after `docker run`" for s in run.start_ups)
    row(
        "surge replicas starting, out of rotation (not judged)",
        by_phase["start-up"],
        f"{starting}, each held to {LOADING_CPUS:g} CPU until ready; on this machine their start-up takes "
        "the serving replicas' CPU, in a cluster it has a node's",
    )
    share = ", ".join(f"{name} {n}" for name, n in sorted(shares.items()))
    row("steady, before the rollout", by_phase["steady"], f"answers by replica: {share}")
    notes = "; ".join(
        f"{r.new} in rotation {r.taken_in_s:.1f} s after leaving maintenance; {r.old} out of rotation "
        f"{r.out_of_rotation_s:.1f} s after SIGTERM, exit {r.exit_code} after {r.exit_s:.1f} s "
        f"(p99 meanwhile {p99_ms(r.stopping):.0f} ms)"
        for r in run.replacements
    )
    row("rollout: " + ", then ".join(f"{old} by {new}" for old, new in SURGE), by_phase["rollout"], notes)
    row(
        "everything answered before the kill", by_phase["graceful"], "start-up, steady, rollout and the seconds between"
    )
    kill = by_phase["kill"]
    row(
        f"`docker kill` {run.kill.replica}, and {AFTER_KILL_S:.0f} s after",
        kill,
        f"out of rotation {run.kill.out_of_rotation_s:.1f} s after the kill; failures: the requests in flight on it",
    )
    p99_ratio = by_phase["rollout"].p(99) / by_phase["steady"].p(99)
    head = (
        f"`make test-rollout`, {datetime.date.today()}, {machine()}: capacity through the balancer "
        f"{run.capacity:.0f} req/s, load {run.rate:.0f} req/s (REST and gRPC in turn); "
        f"readiness checked every {pod.readiness.period_s:g} s, out after {pod.readiness.failures} failures; "
        f"MHASERVE_SHUTDOWN_DELAY_S {pod.delay_s:g}, terminationGracePeriodSeconds {pod.termination_grace_s}; "
        f"rollout p99 / steady p99 = {p99_ratio:.2f} (target <= {P99_RATIO_LIMIT:g}: "
        f"{'met' if p99_ratio <= P99_RATIO_LIMIT else 'missed'})\n\n"
    )
    columns = "| scenario | sent | answered correctly | wrong | failed (by status) | p50 / p99 | notes |\n"
    columns += "|---|---|---|---|---|---|---|\n"
    return head + columns + "\n".join(rows) + "\n"


# the test -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def haproxy() -> str:
    path = haproxy_binary()
    if path is None:
        unavailable("no haproxy: apt-get install haproxy (as root); .ci/run installs it in CI")
    return path


def test_rolling_replacement_behind_haproxy_loses_nothing_and_a_kill_costs_only_what_was_in_flight(
    docker, image, image_artifact, haproxy, tmp_path
):
    deadline = Deadline(BUDGET_S)
    started = time.monotonic()
    pod = cpu_pod()
    # the manifests agree with themselves: a balancer following the probe stops routing before the
    # drain starts refusing, and the pod is given time for the delay and the drain
    assert pod.delay_s >= pod.readiness.out_of_rotation_within_s + 1
    assert pod.termination_grace_s >= pod.delay_s + pod.grace_s + 5

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o755)
    keys_dir.chmod(0o755)
    (keys_dir / "keys").write_text(API_KEY + "\n")
    (keys_dir / "keys").chmod(0o644)
    fleet = Fleet(docker, pod, keys_dir, deadline)
    balancer = None
    try:
        first = [fleet.start("r1"), fleet.start("r2")]
        for container in first:
            container.wait_ready(min(NEW_REPLICA_READY_WITHIN_S, deadline.left()))
        balancer = Balancer.start(haproxy, tmp_path, list(fleet.slots.values()), pod.readiness)
        for _, new in SURGE:
            balancer.command(f"set server rest/{new} state maint")
        for name, status in (("r1", "UP"), ("r2", "UP"), ("r3", "MAINT"), ("r4", "MAINT")):
            balancer.wait_for(name, status, within_s=3 * pod.readiness.period_s + 5)
        while balancer.states() != {"r1": "UP", "r2": "UP", "r3": "MAINT", "r4": "MAINT"}:
            time.sleep(0.1)
            deadline.left()
        run = asyncio.run(scenario(fleet, balancer))
        logged = balancer.logged()
        sessions = balancer.sessions()
        haproxy_log = balancer.log_text()
    finally:
        if balancer is not None:
            balancer.stop()
            TABLE.parent.mkdir(parents=True, exist_ok=True)
            (TABLE.parent / "haproxy.log").write_text(balancer.log_text())
        fleet.remove_all()

    reference = Reference(Artifact.load(image_artifact))
    by_phase = phases(run, wrong_answers(run.outcomes, reference))
    steady_ids = {str(o.index) for o in by_phase["steady"].outcomes}
    shares = Counter(entry.server for rid, entry in logged.items() if rid in steady_ids and entry.status == "200")
    text = table(run, by_phase, dict(shares), pod)
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text(text)
    print("\n" + text)

    failures = [o for o in run.outcomes if o.status != "200"]
    if failures:
        print(describe(failures, run, logged))

    # both graceful replacements: nothing lost or wrong, no 5xx, no gRPC error. An overloaded
    # replica's explicit refusal (429 / RESOURCE_EXHAUSTED) is counted: a rollout that took
    # capacity away would show as more of them than the steady load saw on the same machine
    graceful = by_phase["graceful"]
    assert graceful.outcomes and not graceful.wrong
    broken = [o for o in graceful.outcomes if o.status not in ("200", *OVERLOADED)]
    assert not broken, describe(broken, run, logged) + "\n" + haproxy_log[-2000:]
    refused = {name: by_phase[name].refused_fraction for name in ("steady", "rollout")}
    assert refused["rollout"] <= refused["steady"] + 0.01, f"refused as overloaded: {refused}"
    assert {"r1", "r2"} <= set(shares), f"the steady load did not reach both replicas: {shares}"
    for replacement in run.replacements:
        assert replacement.exit_code == 0, replacement
        # measured against the manifests: out of rotation within the probe's reach and before the
        # drain began; gone well before the pod's grace period ends
        assert replacement.out_of_rotation_s <= pod.readiness.out_of_rotation_within_s + 1, replacement
        assert replacement.out_of_rotation_s < pod.delay_s, replacement
        assert replacement.exit_s < pod.termination_grace_s, replacement
        assert replacement.exit_s < pod.delay_s + pod.grace_s, replacement

    # the kill: the only failures are requests that were on the killed replica when it died. The
    # balancer logs a REST one (502, the server broke off); a gRPC one it does not log, so each
    # such failure must be a request it sent the killed replica and never logged. (A request it
    # sent there after the kill found the port closed and went to another replica: logged there,
    # as redispatched, `+1`.)
    assert run.kill is not None
    kill = by_phase["kill"]
    assert not kill.wrong
    failed = [o for o in kill.outcomes if o.status != "200"]
    assert all(o.sent_at < run.kill.killed_at for o in failed), describe(failed, run, logged)
    unlogged = [o for o in failed if str(o.index) not in logged]
    assert all(logged[str(o.index)].server == run.kill.replica for o in failed if o not in unlogged)
    assert all(o.transport == "grpc" for o in unlogged), describe(unlogged, run, logged)
    logged_by = Counter((entry.backend, entry.server) for entry in logged.values())
    never_logged = {key: n - logged_by[key] for key, n in sessions.items() if key[0] == "grpc"}
    redispatched = sum(entry.backend == "grpc" and entry.retries.startswith("+") for entry in logged.values())
    expected = {key: len(unlogged) + redispatched if key[1] == run.kill.replica else 0 for key in never_logged}
    assert never_logged == expected, (never_logged, len(unlogged), redispatched)
    down_at = run.kill.killed_at + run.kill.out_of_rotation_s
    after_down = [o for o in run.outcomes if o.sent_at > down_at]
    assert after_down and all(o.status == "200" for o in after_down)
    assert time.monotonic() - started < BUDGET_S
