"""The onnxruntime backend: an artifact's sessions, provider choice, threads, warm-up, IO binding."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from artifact.hardware import cuda_usable
from artifact.manifest import (
    ATTENTION,
    ATTENTION_MASK,
    FAST,
    FAST_FP16,
    FAST_INT8,
    INPUT_IDS,
    TOKEN_TYPE_IDS,
    Artifact,
    ArtifactError,
)
from service.backends.base import ModelSpec, Placement
from service.config import Settings
from service.threads import lower_thread_priority

log = logging.getLogger(__name__)


CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class RunsInProgress:
    """Counts a graph's session runs in progress, to tell a batch that runs alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[bool]:
        """Yields True when no other run is in progress as this one starts."""
        with self._lock:
            self._running += 1
            alone = self._running == 1
        try:
            yield alone
        finally:
            with self._lock:
                self._running -= 1


@dataclass
class GraphRunner:
    """One graph's onnxruntime sessions. `run` releases the GIL and may be called from worker threads.

    With several workers on the CPU each run gets the worker's share of the cores (`session`),
    except a run that starts while no other is in progress: a lone request at idle gets all
    the cores (`solo`), so splitting the cores between workers costs no idle latency.
    """

    role: str
    file: str
    precision: str
    provider: str
    session: ort.InferenceSession
    output_names: tuple[str, ...]
    solo: ort.InferenceSession | None = None
    token_types: bool = False  # the graph takes token_type_ids: a pair's segments, else zeros (one segment)
    runs: RunsInProgress = field(default_factory=RunsInProgress, repr=False)

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
    ) -> list[np.ndarray]:
        if self.provider == CUDA:
            return self._run_bound(input_ids, attention_mask, token_type_ids)
        if self.solo is None:
            return self.run_on(self.session, input_ids, attention_mask, token_type_ids)
        with self.runs.enter() as alone:
            return self.run_on(self.solo if alone else self.session, input_ids, attention_mask, token_type_ids)

    def run_on(
        self,
        session: ort.InferenceSession,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        if self.token_types:
            feeds[TOKEN_TYPE_IDS] = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return session.run(self.output_names, feeds)

    def _run_bound(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
    ) -> list[np.ndarray]:
        """IO binding: inputs copied to the device once, outputs left there by the run and
        copied back once, instead of onnxruntime staging them through extra host buffers."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_IDS, input_ids)
        binding.bind_cpu_input(ATTENTION_MASK, attention_mask)
        if self.token_types:
            types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            binding.bind_cpu_input(TOKEN_TYPE_IDS, types)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    """spinning: intra-op threads spin between parallel sections instead of sleeping. Only the
    solo session spins: a run that starts alone has the cores to itself, and a sleeping thread
    costs a wake-up per parallel section (about a quarter of a short sentence's latency on 2
    cores, docs/performance.md). Every other session's idle threads sleep: the event loop, the
    tokenizer and the next batch's preparation need those cycles on a machine with few cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no provider chatter on CPU machines
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # No CPU arena: an arena keeps, per session, the peak that any batch shape ever needed, for
    # the life of the process (RSS rose 15 % over a flood and never came down); malloc reuses
    # the same blocks from batch to batch at the same speed (docs/performance.md)
    options.enable_cpu_mem_arena = False
    return options


def compute_threads(settings: Settings, provider: str, cores: int) -> tuple[int, int]:
    """(workers, intra-op threads per worker) from the settings; 0 means auto for either.

    On the CPU two single-threaded workers beat one two-threaded one under load: a batch's
    parallel sections wait for their slowest thread, and the serving loop (at a higher
    priority) keeps taking a core from one of them (docs/performance.md). A batch that
    starts alone still gets every core (GraphRunner.solo). An explicit --intra-op-threads
    means the compute threads in all (one worker) unless --inference-workers is set too.
    A GPU runs one batch at a time.
    """
    workers = settings.inference_workers
    if workers == 0:
        workers = 2 if provider == CPU and cores >= 2 and settings.intra_op_threads == 0 else 1
    threads = settings.intra_op_threads or max(1, cores // workers)
    if provider == CPU and workers * threads > cores:
        log.warning(
            "%d inference workers x %d intra-op threads = %d compute threads on %d usable cores: they will "
            "take turns; set --inference-workers x --intra-op-threads <= the cores",
            workers,
            threads,
            workers * threads,
            cores,
        )
    return workers, threads


def choose_placement(artifact: Artifact, settings: Settings) -> tuple[str, str]:
    """(provider, fast-graph role) from the settings, the artifact and the hardware."""
    graphs = artifact.manifest.graphs
    # a GPU counts only with an onnxruntime that can use it (the CPU image carries plain onnxruntime)
    cuda_build = CUDA in ort.get_available_providers()
    gpu = cuda_build and cuda_usable()
    if settings.device == "cuda" and not gpu:
        reason = "no usable CUDA GPU on this machine" if cuda_build else "this onnxruntime has no CUDA provider"
        raise ArtifactError(f"--device cuda: {reason} (use --device auto or cpu)")
    provider = CUDA if (settings.device == "cuda" or (settings.device == "auto" and gpu)) else CPU
    precision = settings.precision
    if precision == "auto":
        precision = "fp16" if provider == CUDA and FAST_FP16 in graphs else "fp32"
    role = {"fp32": FAST, "fp16": FAST_FP16, "int8": FAST_INT8}[precision]
    if role not in graphs:
        raise ArtifactError(f"{artifact.directory}: --precision {precision}: the artifact has no {role!r} graph")
    if precision == "fp16" and provider == CPU:
        raise ArtifactError("--precision fp16 needs CUDA: onnxruntime's CPU provider has no fp16 kernels")
    if precision == "int8" and provider == CUDA:
        raise ArtifactError("--precision int8 runs on the CPU only (dynamic quantization); use --device cpu")
    return provider, role


def load_runner(
    artifact: Artifact,
    role: str,
    provider: str,
    threads: int,
    solo_threads: int = 0,
) -> GraphRunner:
    """The graph's session with `threads` intra-op threads, and with solo_threads > threads a
    second one for runs that start alone (a second copy of the weights and their prepacked
    forms: ~130 MB more resident for MiniLM fp32)."""
    spec = artifact.manifest.graphs[role]
    path = artifact.graph_path(role)
    providers = [(CUDA, {"device_id": 0}), CPU] if provider == CUDA else [CPU]
    if provider == CUDA and hasattr(ort, "preload_dlls"):
        # CUDA and cuDNN from the nvidia-* pip packages when present, else the system's
        ort.preload_dlls()
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        solo = None
        if solo_threads > threads:
            solo = ort.InferenceSession(str(path), session_options(solo_threads, spinning=True), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ArtifactError(f"{path}: onnxruntime cannot load this graph ({exc})") from None
    actual = session.get_providers()[0]
    if actual != provider:
        log.warning("%s: asked for %s, onnxruntime gave %s", path.name, provider, actual)
    names = tuple(o.name for o in session.get_outputs())
    missing = [name for name in spec.outputs if name not in names]
    if missing:
        raise ArtifactError(f"{path}: output {missing[0]!r} named in the manifest is not in the graph")
    token_types = TOKEN_TYPE_IDS in {i.name for i in session.get_inputs()}
    return GraphRunner(role, spec.file, spec.precision, actual, session, spec.outputs, solo, token_types=token_types)


@dataclass
class OnnxBackend:
    """An artifact's fast graph (embeddings, token embeddings; a cross-encoder's logits) and
    attention graph, ready to run."""

    spec: ModelSpec
    tokenizer: Tokenizer
    fast: GraphRunner
    attention: GraphRunner
    workers: int  # fast-graph batches computed at once (the attention graph runs one at a time)
    threads: int  # intra-op threads of each
    # a short sentence is 2 to 4 ms on 2 CPU cores: that long, a lone one may hold the event loop
    inline_max_tokens: int = 32

    @property
    def placement(self) -> Placement:
        return Placement(provider=self.fast.provider, precision=self.fast.precision, graph=self.fast.file)

    @classmethod
    def load(cls, model_dir: Path, settings: Settings) -> OnnxBackend:
        """Verifies the artifact's checksums, then creates its sessions."""
        artifact = Artifact.load(model_dir)
        # sessions are created on a thread of lowered priority: onnxruntime's pool threads inherit it
        with ThreadPoolExecutor(1, "runtime-load", lower_thread_priority, (settings.inference_nice,)) as thread:
            return thread.submit(cls._load, artifact, settings).result()

    @classmethod
    def _load(cls, artifact: Artifact, settings: Settings) -> OnnxBackend:
        provider, role = choose_placement(artifact, settings)
        workers, threads = compute_threads(settings, provider, usable_cores())
        solo_threads = workers * threads if provider == CPU and workers > 1 else 0
        fast = load_runner(artifact, role, provider, threads, solo_threads)
        # attention probabilities are always computed in fp32 (the fp16 graph has no explicit softmax);
        # its requests are few and heavy: one batch at a time on all the threads, one session's memory
        attention = load_runner(artifact, ATTENTION, provider, workers * threads)
        log.info(
            "%s: provider %s, fast graph %s (%s), attention graph %s (%s), %d worker(s) x %d intra-op threads",
            artifact.manifest.name,
            fast.provider,
            fast.file,
            fast.precision,
            attention.file,
            attention.precision,
            workers,
            threads,
        )
        m = artifact.manifest
        spec = ModelSpec(
            name=m.name,
            version=m.version,
            d_model=m.d_model,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
            max_len=m.max_len,
            pooling=m.pooling,
            normalize=m.normalize,
            dense=artifact.dense_layers(),
            matryoshka_dims=m.matryoshka_dims,
            prompts=dict(m.prompts),
            default_prompt_name=m.default_prompt_name,
            task=m.task,
            labels=m.labels,
            score_activation=m.score_activation,
        )
        tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
        # a pair is cut as transformers cuts it: a token at a time from the longer side
        tokenizer.enable_truncation(max_length=m.max_len, strategy="longest_first")
        tokenizer.no_padding()
        return cls(spec, tokenizer, fast, attention, workers, threads)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (hidden,) = self.fast.run(input_ids, attention_mask)
        return hidden

    def attend(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hidden, probs = self.attention.run(input_ids, attention_mask)
        return hidden, probs

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        (logits,) = self.fast.run(input_ids, attention_mask, token_type_ids)
        return logits

    def score_attend(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.attention.run(input_ids, attention_mask, token_type_ids)
        return logits, probs

    def warm_up(self) -> float:
        """Run each graph on short and long inputs so the first request pays no allocation."""
        started = time.perf_counter()
        max_len = self.spec.max_len
        token = min(100, self.tokenizer.get_vocab_size() - 1)  # any real token: small vocabularies too
        for runner in (self.fast, self.attention):
            for batch, length in ((1, 8), (4, min(max_len, 64)), (2, max_len)):
                ids = np.full((batch, length), token, dtype=np.int64)
                runner.run(ids, np.ones_like(ids))  # a lone batch's path: IO binding, or the solo session
                if runner.solo is not None:
                    runner.run_on(runner.session, ids, np.ones_like(ids))  # and the path of one beside another
        return time.perf_counter() - started
