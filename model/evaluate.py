"""Parity and quality figures for an artifact: `python -m model eval DIR` prints each one.

Every figure is a Check with its bound, so the same numbers gate the tests, the export's
int8 decision and the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from artifact.hardware import cuda_usable
from artifact.manifest import (
    ATTENTION_MASK,
    FAST,
    FAST_FP16,
    FAST_INT8,
    INPUT_IDS,
    LOGITS,
    TOKEN_TYPE_IDS,
    Artifact,
)
from artifact.pooling import Dense, l2_normalize, pad_batch, pool
from model.data import read_sts, sts_dir, unique_sentences

PUBLISHED_STS_TEST = 82.03  # all-MiniLM-L6-v2, Spearman x100, cosine of mean-pooled embeddings


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None  # None: not measured here, `note` says why
    bound: str
    passed: bool
    note: str = ""

    def line(self) -> str:
        if self.value is None:
            return f"  SKIP  {self.name}: {self.note}"
        mark = "ok  " if self.passed else "FAIL"
        shown = f"{self.value:.6g}"
        return f"  {mark}  {self.name} = {shown}  (bound: {self.bound}){'  ' + self.note if self.note else ''}"


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rank(np.asarray(a, dtype=np.float64)), rank(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


class OrtEmbedder:
    """Runs one graph over sentences in length-sorted batches, as the server would, pooling as the
    artifact says (its pooling mode and Dense layers) unless told otherwise.

    remember: keep each answer, so checks that embed the same sentences the same way (the
    evaluation's fp32 passes over sts-dev and sts-test) compute them once."""

    def __init__(
        self,
        graph: Path,
        tokenizer: Tokenizer,
        providers: list[str] | None = None,
        threads: int = 0,
        pooling: str = "mean",
        dense: tuple[Dense, ...] = (),
        remember: bool = False,
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(graph), options, providers=providers or ["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        self.pooling, self.dense = pooling, dense
        self.token_types = TOKEN_TYPE_IDS in {i.name for i in self.session.get_inputs()}
        self._remembered: dict[tuple, np.ndarray] | None = {} if remember else None

    @classmethod
    def for_artifact(cls, artifact: Artifact, role: str = FAST, **kwargs) -> OrtEmbedder:
        tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
        m = artifact.manifest
        return cls(artifact.graph_path(role), tokenizer, pooling=m.pooling, dense=artifact.dense_layers(), **kwargs)

    def feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        if self.token_types:
            feeds[TOKEN_TYPE_IDS] = np.zeros_like(input_ids)
        return feeds

    def embed(self, sentences: list[str], pooling: str | None = None, normalize: bool = True, batch_size: int = 64):
        if self._remembered is None:
            return self._embed(sentences, pooling, normalize, batch_size)
        key = (tuple(sentences), pooling, normalize, batch_size)
        if key not in self._remembered:
            self._remembered[key] = self._embed(sentences, pooling, normalize, batch_size)
        return self._remembered[key].copy()

    def _embed(self, sentences: list[str], pooling: str | None, normalize: bool, batch_size: int) -> np.ndarray:
        token_ids = [e.ids for e in self.tokenizer.encode_batch(sentences)]
        order = np.argsort([len(t) for t in token_ids], kind="stable")
        out = np.zeros((len(sentences), 0), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = [token_ids[i] for i in index]
            input_ids, attention_mask = pad_batch(batch)
            hidden = self.session.run(None, self.feeds(input_ids, attention_mask))[0]
            pooled = pool(hidden, attention_mask.sum(1), pooling or self.pooling, normalize, self.dense)
            if out.shape[1] == 0:
                out = np.zeros((len(sentences), pooled.shape[1]), dtype=np.float32)
            out[index] = pooled
        return out


class OrtCrossEncoder:
    """Scores pairs through a cross-encoder's graph, in length-sorted batches, with the tokenizer
    as the server configures it (pairs truncated longest_first at max_len)."""

    def __init__(
        self,
        graph: Path,
        tokenizer: Tokenizer,
        num_labels: int,
        score_activation: str,
        threads: int = 0,
        providers: list[str] | None = None,
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(graph), options, providers=providers or ["CPUExecutionProvider"])
        self.tokenizer, self.num_labels, self.score_activation = tokenizer, num_labels, score_activation
        self.token_types = TOKEN_TYPE_IDS in {i.name for i in self.session.get_inputs()}

    @classmethod
    def for_artifact(cls, artifact: Artifact, role: str = FAST, **kwargs) -> OrtCrossEncoder:
        m = artifact.manifest
        tokenizer = pair_tokenizer(artifact.tokenizer_path, m.max_len)
        return cls(artifact.graph_path(role), tokenizer, len(m.labels), m.score_activation, **kwargs)

    def feeds(self, encodings: list) -> dict[str, np.ndarray]:
        input_ids, attention_mask = pad_batch([e.ids for e in encodings])
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        if self.token_types:
            token_type_ids = np.zeros_like(input_ids)
            for row, e in enumerate(encodings):
                token_type_ids[row, : len(e.type_ids)] = e.type_ids
            feeds[TOKEN_TYPE_IDS] = token_type_ids
        return feeds

    def logits(self, pairs: list[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """(N, num_labels) raw logits, as the graph outputs them."""
        encodings = self.tokenizer.encode_batch(pairs)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        out = np.zeros((len(pairs), self.num_labels), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            out[index] = self.session.run([LOGITS], self.feeds([encodings[i] for i in index]))[0]
        return out

    def scores(self, pairs: list[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
        """What CrossEncoder.predict answers: the artifact's score_activation on the logits."""
        return apply_score_activation(self.logits(pairs, batch_size), self.score_activation)


def pair_tokenizer(path: Path, max_len: int) -> Tokenizer:
    """An artifact's tokenizer set up as the server sets it up for pairs."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_len, strategy="longest_first")
    tokenizer.no_padding()
    return tokenizer


def apply_score_activation(logits: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits


def artifact_sts_spearman(artifact: Artifact, pairs: list, role: str = FAST) -> float:
    """Spearman x100 of a one-label cross-encoder artifact's scores against gold STS scores, in process."""
    scorer = OrtCrossEncoder.for_artifact(artifact, role)
    return cross_sts_score(scorer, pairs)


def cross_sts_score(scorer: OrtCrossEncoder, pairs: list) -> float:
    scores = scorer.scores([(p.sentence1, p.sentence2) for p in pairs])[:, 0]
    return 100.0 * spearman(scores, np.array([p.score for p in pairs]))


def cross_int8_gate(
    fp32_graph: Path, int8_graph: Path, tokenizer_path: Path, num_labels: int, score_activation: str
) -> dict:
    """int8 is kept only when it scores pairs as fp32 does: on sts-dev pairs the scores' rank
    correlation to fp32's >= 0.99 and the largest score change <= 0.05; for a one-label model also
    sts-test within 0.3 of fp32 (the same bound as embedders)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))  # saved with the export's truncation
    fp32 = OrtCrossEncoder(fp32_graph, tokenizer, num_labels, score_activation)
    int8 = OrtCrossEncoder(int8_graph, tokenizer, num_labels, score_activation)
    dev = [(p.sentence1, p.sentence2) for p in read_sts(sts_dir() / "sts-dev.csv")]
    a, b = fp32.scores(dev), int8.scores(dev)
    agreement = min(spearman(a[:, k], b[:, k]) for k in range(num_labels))
    gate = {"score_spearman_to_fp32": round(agreement, 5), "max_score_diff": round(float(np.abs(a - b).max()), 5)}
    passed = agreement >= 0.99 and gate["max_score_diff"] <= 0.05
    if num_labels == 1:
        test = read_sts(sts_dir() / "sts-test.csv")
        gate["sts_test_fp32"] = round(cross_sts_score(fp32, test), 3)
        gate["sts_test_int8"] = round(cross_sts_score(int8, test), 3)
        passed = passed and abs(gate["sts_test_fp32"] - gate["sts_test_int8"]) <= 0.3
    gate["passed"] = bool(passed)
    return gate


def sts_score(embedder: OrtEmbedder, split: str) -> float:
    pairs = read_sts(sts_dir() / f"sts-{split}.csv")
    sentences = unique_sentences(pairs)
    index = {s: i for i, s in enumerate(sentences)}
    vectors = l2_normalize(embedder.embed(sentences))
    cosines = [float(vectors[index[p.sentence1]] @ vectors[index[p.sentence2]]) for p in pairs]
    return 100.0 * spearman(np.array(cosines), np.array([p.score for p in pairs]))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


def int8_gate(
    fp32_graph: Path,
    int8_graph: Path,
    tokenizer_path: Path,
    pooling: str = "mean",
    dense: tuple[Dense, ...] = (),
    fp32: OrtEmbedder | None = None,
) -> dict:
    """int8 is kept only when it stays close to fp32: STS within 0.3, cosines high on sts-dev.

    fp32: an embedder of fp32_graph already at hand (one that remembers saves its passes)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    fp32 = fp32 or OrtEmbedder(fp32_graph, tokenizer, pooling=pooling, dense=dense)
    int8 = OrtEmbedder(int8_graph, tokenizer, pooling=pooling, dense=dense)
    dev = unique_sentences(read_sts(sts_dir() / "sts-dev.csv"))
    cos = cosine_rows(fp32.embed(dev), int8.embed(dev))
    test_fp32, test_int8 = sts_score(fp32, "test"), sts_score(int8, "test")
    gate = {
        "sts_test_fp32": round(test_fp32, 3),
        "sts_test_int8": round(test_int8, 3),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_p01": round(float(np.percentile(cos, 1)), 5),
        "cosine_min": round(float(cos.min()), 5),
    }
    gate["passed"] = bool(
        abs(test_fp32 - test_int8) <= 0.3 and gate["cosine_p01"] >= 0.98 and gate["cosine_mean"] >= 0.99
    )
    return gate


def torch_checks(artifact: Artifact, tokenizer: Tokenizer, dev: list[str], fast: OrtEmbedder) -> list[Check]:
    """Needs the training extra (torch) and, for the first figure, sentence-transformers."""
    try:
        import torch

        from model.weights import load_checkpoint
    except ImportError as exc:
        return [Check("torch parity", None, "", True, f"torch not installed ({exc.name})")]
    checkpoint = artifact.manifest.provenance.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_dir():
        return [Check("torch parity", None, "", True, f"source checkpoint {checkpoint!r} not on this machine")]
    encoder = load_checkpoint(Path(checkpoint))
    checks = []
    token_ids = [e.ids for e in tokenizer.encode_batch(dev)]
    order = np.argsort([len(t) for t in token_ids], kind="stable")
    attention = ort.InferenceSession(str(artifact.graph_path("attention")), providers=["CPUExecutionProvider"])
    pooled = np.zeros((len(dev), artifact.manifest.embedding_dim), dtype=np.float32)
    first_batch = None
    max_hidden_diff = max_prob_diff = max_row_error = max_padded_prob = 0.0
    with torch.no_grad():
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            input_ids, attention_mask = pad_batch([token_ids[i] for i in index])
            feeds = fast.feeds(input_ids, attention_mask)
            ids_t, mask_t = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
            hidden, probs = encoder(ids_t, mask_t, return_attention=True)
            pooled[index] = pool(hidden.numpy(), attention_mask.sum(1), fast.pooling, True, fast.dense)
            onnx_hidden = fast.session.run(None, feeds)[0]
            max_hidden_diff = max(max_hidden_diff, float(np.abs(onnx_hidden - hidden.numpy()).max()))
            if start < 4 * 64:  # attention parity on the first batches: (B, L, h, T, T) is large
                _, onnx_probs = attention.run(None, feeds)
                if first_batch is None:
                    first_batch = (input_ids, attention_mask, onnx_probs)
                max_prob_diff = max(max_prob_diff, float(np.abs(onnx_probs - probs.numpy()).max()))
                max_row_error = max(max_row_error, float(np.abs(onnx_probs.sum(-1) - 1.0).max()))
                padded_keys = attention_mask[:, None, None, None, :] == 0
                padded_keys = np.broadcast_to(padded_keys, onnx_probs.shape)
                max_padded_prob = max(max_padded_prob, float(np.abs(onnx_probs[padded_keys]).max(initial=0.0)))
    try:
        from sentence_transformers import SentenceTransformer

        if not (Path(checkpoint) / "modules.json").exists():  # e.g. written by `python -m model train`
            raise LookupError("not a sentence-transformers checkpoint")
        st = SentenceTransformer(checkpoint, device="cpu")
        reference = st.encode(dev, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        cos = cosine_rows(pooled, reference)
        checks.append(
            Check("torch vs sentence-transformers min cosine", float(cos.min()), ">= 0.99999", cos.min() >= 0.99999)
        )
        served = cosine_rows(fast.embed(dev), reference)
        name = "fast graph vs sentence-transformers min cosine"
        checks.append(Check(name, float(served.min()), ">= 0.9999", served.min() >= 0.9999))
        long_texts = long_inputs(dev, tokenizer, artifact.manifest.max_len)
        truncated = cosine_rows(
            fast.embed(long_texts, batch_size=8),
            st.encode(long_texts, batch_size=8, convert_to_numpy=True, show_progress_bar=False),
        )
        checks.append(
            Check(
                "fast graph vs sentence-transformers min cosine, texts truncated at max_len",
                float(truncated.min()),
                ">= 0.9999",
                truncated.min() >= 0.9999,
                f"{len(long_texts)} texts cut at {artifact.manifest.max_len} tokens",
            )
        )
    except ImportError:
        checks.append(Check("torch vs sentence-transformers", None, "", True, "sentence-transformers not installed"))
    except LookupError as exc:
        checks.append(Check("torch vs sentence-transformers", None, "", True, str(exc)))
    checks.append(transformers_attention_check(Path(checkpoint), encoder.config.pad_token_id, first_batch))
    checks += [
        Check("fast graph vs torch max |hidden diff|", max_hidden_diff, "<= 1e-4", max_hidden_diff <= 1e-4),
        Check("attention graph vs torch max |prob diff|", max_prob_diff, "<= 1e-5", max_prob_diff <= 1e-5),
        Check("attention rows max |sum - 1|", max_row_error, "<= 1e-5", max_row_error <= 1e-5),
        Check("attention on padded keys max", max_padded_prob, "== 0", max_padded_prob == 0.0),
    ]
    return checks


def long_inputs(sentences: list[str], tokenizer: Tokenizer, max_len: int, count: int = 16) -> list[str]:
    """Texts made of consecutive sentences until each is longer than max_len tokens untruncated."""
    untruncated = Tokenizer.from_str(tokenizer.to_str())
    untruncated.no_truncation()
    texts, current = [], []
    for sentence in sentences:
        current.append(sentence)
        if len(untruncated.encode(" ".join(current), add_special_tokens=False).ids) > max_len + 32:
            texts.append(" ".join(current))
            current = []
            if len(texts) == count:
                break
    return texts


def transformers_attention_check(checkpoint: Path, pad_id: int, first_batch) -> Check:
    """The attention graph's probabilities against transformers' eager attention on real weights."""
    name = "attention graph vs transformers eager max |prob diff|"
    if first_batch is None or not (checkpoint / "config.json").exists():
        return Check(name, None, "", True, "not a Hugging Face checkpoint")
    try:
        import torch
        from transformers import AutoModel
    except ImportError:
        return Check(name, None, "", True, "transformers not installed")
    input_ids, attention_mask, onnx_probs = first_batch
    model = AutoModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    ids = np.where(attention_mask == 1, input_ids, pad_id)  # transformers' MPNet reads positions from the pad id
    with torch.no_grad():
        out = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(attention_mask), output_attentions=True)
    theirs = torch.stack(out.attentions, dim=1).numpy()  # (B, L, h, T, T)
    real_rows = np.broadcast_to(attention_mask[:, None, None, :, None] == 1, theirs.shape)
    diff = float(np.abs(onnx_probs - theirs)[real_rows].max())
    return Check(name, diff, "<= 1e-4", diff <= 1e-4)


def padding_checks(fast: OrtEmbedder, tokenizer: Tokenizer, dev: list[str]) -> list[Check]:
    short = min(dev[:200], key=len)
    longer = sorted(dev[:200], key=len)[-7:]
    alone = fast.embed([short])[0]
    batched = fast.embed([short, *longer], batch_size=8)[0]
    diff_pad = float(np.abs(alone - batched).max())
    sample = dev[:48]
    forward = fast.embed(sample, batch_size=48)
    backward = fast.embed(sample[::-1], batch_size=48)[::-1]
    diff_order = float(np.abs(forward - backward).max())
    return [
        Check("padding invariance max |diff|", diff_pad, "<= 1e-5", diff_pad <= 1e-5),
        Check("batch order invariance max |diff|", diff_order, "<= 1e-5", diff_order <= 1e-5),
    ]


def fp16_check(artifact: Artifact, tokenizer: Tokenizer, dev: list[str], fp32_dev: np.ndarray) -> Check:
    if FAST_FP16 not in artifact.manifest.graphs:
        return Check("fp16 min cosine to fp32", None, "", True, "no fp16 graph in this artifact")
    if not cuda_usable():
        import onnx

        onnx.checker.check_model(str(artifact.graph_path(FAST_FP16)), full_check=True)
        return Check("fp16 min cosine to fp32", None, "", True, "no CUDA GPU here; onnx.checker passed the graph")
    fp16 = OrtEmbedder.for_artifact(artifact, FAST_FP16, providers=["CUDAExecutionProvider"])
    cos = cosine_rows(fp32_dev, fp16.embed(dev))
    return Check("fp16 (CUDA) min cosine to fp32", float(cos.min()), ">= 0.999", cos.min() >= 0.999)


def cross_torch_checks(artifact: Artifact, pairs: list[tuple[str, str]]) -> list[Check]:
    """A cross-encoder artifact against its source: CrossEncoder.predict (a sentence-transformers
    or transformers directory) or the trained torch model, and transformers' eager attention."""
    checkpoint = Path(artifact.manifest.provenance.get("checkpoint", ""))
    if not checkpoint.is_dir():
        return [Check("torch parity", None, "", True, f"source checkpoint {str(checkpoint)!r} not on this machine")]
    try:
        import torch

        from model.cross_encoder import CROSS_ENCODER_CONFIG, load_cross_encoder
        from model.train.tasks import pair_logits
    except ImportError as exc:
        return [Check("torch parity", None, "", True, f"torch not installed ({exc.name})")]
    m = artifact.manifest
    fast, attention = OrtCrossEncoder.for_artifact(artifact), OrtCrossEncoder.for_artifact(artifact, "attention")
    long_pairs = long_pair_inputs(pairs, fast.tokenizer, m.max_len)
    checks = []
    if (checkpoint / CROSS_ENCODER_CONFIG).exists():  # trained here: the torch model is the reference
        model = load_cross_encoder(checkpoint)
        expected = pair_logits(model, fast.tokenizer.encode_batch(pairs), torch.device("cpu"))
        diff = float(np.abs(fast.logits(pairs) - expected).max())
        checks.append(Check("fast graph vs torch max |logit diff|", diff, "<= 1e-4", diff <= 1e-4))
        feeds = attention.feeds(attention.tokenizer.encode_batch(pairs[:16]))
        _, probs = attention.session.run([LOGITS, "attention_probs"], feeds)
        with torch.no_grad():
            tensors = [torch.from_numpy(feeds[k]) for k in (INPUT_IDS, ATTENTION_MASK)]
            types = torch.from_numpy(feeds[TOKEN_TYPE_IDS]) if TOKEN_TYPE_IDS in feeds else None
            _, theirs = model(*tensors, types, return_attention=True)
        diff = float(np.abs(probs - theirs.numpy()).max())
        checks.append(Check("attention graph vs torch max |prob diff|", diff, "<= 1e-5", diff <= 1e-5, "16 pairs"))
    else:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError:
            return [Check("CrossEncoder.predict parity", None, "", True, "sentence-transformers not installed")]
        reference = CrossEncoder(str(checkpoint), device="cpu", max_length=m.max_len)
        for label, subset in (("", pairs), (", pairs truncated at max_len", long_pairs)):
            expected = reference.predict(subset, batch_size=32, show_progress_bar=False).reshape(len(subset), -1)
            ours = fast.scores(subset)
            diff = float(np.abs(ours - expected).max())
            name = f"fast graph vs CrossEncoder.predict max |score diff|{label}"
            checks.append(Check(name, diff, "<= 1e-4", diff <= 1e-4, f"{len(subset)} pairs"))
            raw = reference.predict(subset, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)
            diff = float(np.abs(fast.logits(subset) - raw.reshape(len(subset), -1)).max())
            name = f"fast graph vs CrossEncoder.predict max |logit diff|{label}"
            checks.append(Check(name, diff, "<= 1e-4", diff <= 1e-4))
            if ours.shape[1] == 1:
                same = bool(
                    (np.argsort(-ours[:, 0], kind="stable") == np.argsort(-expected[:, 0], kind="stable")).all()
                )
                checks.append(Check(f"ranking identical to CrossEncoder.predict{label}", float(same), "== 1", same))
    checks.append(cross_attention_check(checkpoint, attention, pairs[:16]))
    return checks


def long_pair_inputs(pairs: list[tuple[str, str]], tokenizer: Tokenizer, max_len: int) -> list[tuple[str, str]]:
    """Pairs whose two sides together exceed max_len: one side long, the other short, and both long."""
    texts = long_inputs([a for a, _ in pairs], tokenizer, max_len, count=6)
    return (
        [(t, pairs[i][1]) for i, t in enumerate(texts[:2])]
        + [(pairs[i][0], t) for i, t in enumerate(texts[2:4])]
        + [(texts[4 % len(texts)], texts[5 % len(texts)])]
    )


def cross_attention_check(checkpoint: Path, attention: OrtCrossEncoder, pairs: list[tuple[str, str]]) -> Check:
    name = "attention graph vs transformers eager max |prob diff|"
    if not (checkpoint / "config.json").exists():
        return Check(name, None, "", True, "not a transformers checkpoint")
    try:
        import torch
        from transformers import AutoModelForSequenceClassification
    except ImportError:
        return Check(name, None, "", True, "transformers not installed")
    feeds = attention.feeds(attention.tokenizer.encode_batch(pairs))
    _, probs = attention.session.run([LOGITS, "attention_probs"], feeds)
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    mask = feeds[ATTENTION_MASK]
    pad_id = int(model.config.pad_token_id or 0)  # transformers' MPNet reads positions from the pad id
    inputs = {"input_ids": torch.from_numpy(np.where(mask == 1, feeds[INPUT_IDS], pad_id))}
    inputs["attention_mask"] = torch.from_numpy(mask)
    if TOKEN_TYPE_IDS in feeds:
        inputs["token_type_ids"] = torch.from_numpy(feeds[TOKEN_TYPE_IDS])
    with torch.no_grad():
        theirs = torch.stack(model(**inputs, output_attentions=True).attentions, dim=1).numpy()
    real_rows = np.broadcast_to(mask[:, None, None, :, None] == 1, theirs.shape)
    diff = float(np.abs(probs - theirs)[real_rows].max())
    return Check(name, diff, "<= 1e-4", diff <= 1e-4, f"{len(pairs)} pairs")


def evaluate_cross_encoder(artifact: Artifact, with_torch: bool) -> list[Check]:
    m = artifact.manifest
    dev = read_sts(sts_dir() / "sts-dev.csv")
    pairs = [(p.sentence1, p.sentence2) for p in dev]
    checks = cross_torch_checks(artifact, pairs[:512]) if with_torch else []
    fast = OrtCrossEncoder.for_artifact(artifact)
    alone = fast.logits(pairs[:1])
    longest = sorted(pairs[:200], key=lambda p: len(p[0]) + len(p[1]))[-7:]
    batched = fast.logits([pairs[0], *longest], batch_size=8)[:1]
    diff_pad = float(np.abs(alone - batched).max())
    checks.append(Check("padding invariance max |logit diff|", diff_pad, "<= 1e-5", diff_pad <= 1e-5))
    if len(m.labels) == 1:
        test = read_sts(sts_dir() / "sts-test.csv")
        checks.append(Check("sts-test Spearman x100 (fp32)", cross_sts_score(fast, test), "reported", True))
        if FAST_INT8 in m.graphs:
            int8 = cross_sts_score(OrtCrossEncoder.for_artifact(artifact, FAST_INT8), test)
            checks.append(Check("int8 sts-test Spearman x100", int8, "reported", True))
    return checks


def evaluate(directory: Path, with_torch: bool = True) -> list[Check]:
    artifact = Artifact.load(directory)
    manifest = artifact.manifest
    if manifest.is_cross_encoder:
        return evaluate_cross_encoder(artifact, with_torch)
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    dev = unique_sentences(read_sts(sts_dir() / "sts-dev.csv"))
    fast = OrtEmbedder.for_artifact(artifact, remember=True)
    checks = torch_checks(artifact, tokenizer, dev, fast) if with_torch else []
    checks += padding_checks(fast, tokenizer, dev)

    fp32_test = sts_score(fast, "test")
    published = manifest.provenance.get("published_sts_test")
    if published is not None:
        checks.append(
            Check(
                "sts-test Spearman x100 (fp32)", fp32_test, f"{published} +- 0.05", abs(fp32_test - published) <= 0.05
            )
        )
    else:
        checks.append(Check("sts-test Spearman x100 (fp32)", fp32_test, "reported", True))

    if FAST_INT8 in manifest.graphs:
        head = (manifest.pooling, artifact.dense_layers())
        gate = int8_gate(
            artifact.graph_path(FAST), artifact.graph_path(FAST_INT8), artifact.tokenizer_path, *head, fp32=fast
        )
        checks += [
            Check(
                "int8 sts-test Spearman x100",
                gate["sts_test_int8"],
                f"within 0.3 of {gate['sts_test_fp32']}",
                abs(gate["sts_test_int8"] - gate["sts_test_fp32"]) <= 0.3,
            ),
            Check("int8 cosine to fp32, 1st percentile", gate["cosine_p01"], ">= 0.98", gate["cosine_p01"] >= 0.98),
            Check("int8 cosine to fp32, mean", gate["cosine_mean"], ">= 0.99", gate["cosine_mean"] >= 0.99),
        ]
    else:
        gate = manifest.quality.get("int8_gate")
        checks.append(Check("int8 graph", None, "", True, f"not in the artifact (gate: {json.dumps(gate)})"))

    checks.append(fp16_check(artifact, tokenizer, dev, fast.embed(dev)))
    return checks


def report(checks: list[Check]) -> str:
    failed = [c for c in checks if not c.passed]
    lines = [c.line() for c in checks]
    lines.append(f"{len(checks) - len(failed)} of {len(checks)} checks within their bounds")
    return "\n".join(lines)
