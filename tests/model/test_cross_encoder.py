"""Cross-encoders: loaded key by key from what sentence-transformers' CrossEncoder.save writes (and
the older plain transformers layout), exported to a format-3 artifact whose scores are
CrossEncoder.predict's and whose attention is transformers' eager attention, with pairs
tokenized and truncated as transformers does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file, save_file

from artifact.manifest import ATTENTION, ATTENTION_PROBS, FAST, LOGITS, Artifact
from model.__main__ import main
from model.cross_encoder import load_cross_encoder
from model.errors import ModelError
from model.evaluate import OrtCrossEncoder, pair_tokenizer
from model.weights import default_checkpoint_dir
from tests.support.cross_encoder import write_tiny_bert_classifier, write_tiny_cross_encoder
from tests.support.sentence_transformers import WORDS

LONG = " ".join(WORDS * 2)
PAIRS = [
    ("a man plays guitar", "the dog runs"),
    ("child", "a woman is playing piano in the park"),
    ("the dog runs quickly", "a dog runs slowly"),
    (LONG, "a dog"),  # the first text is cut (longest_first)
    ("dog runs quickly", LONG),  # the second text is cut
    (LONG, LONG),  # both are cut
    ("park", "park"),
]


def export(checkpoint: Path, out: Path, *extra: str) -> Artifact:
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--name", "xe", "--no-int8", *extra]) == 0
    )
    return Artifact.load(out)


@pytest.fixture(scope="module", params=["bert", "mpnet"])
def saved(request, tmp_path_factory) -> tuple[str, Path, Artifact]:
    """A tiny random cross-encoder saved by CrossEncoder.save (max_length 12), and its artifact."""
    root = tmp_path_factory.mktemp(request.param)
    directory = write_tiny_cross_encoder(root / "ce", family=request.param)
    return request.param, directory, export(directory, root / "art")


def test_the_manifest_says_task_labels_and_activation(saved):
    family, directory, artifact = saved
    m = artifact.manifest
    assert (m.format_version, m.task, m.labels, m.score_activation, m.is_cross_encoder) == (
        3,
        "rerank",
        ("LABEL_0",),
        "sigmoid",
        True,
    )
    assert (m.pooling, m.normalize, m.dense, m.max_len) == ("cls", False, (), 12)
    pair_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if family == "bert" else [])
    for role in (FAST, ATTENTION):
        assert list(m.graphs[role].inputs) == pair_inputs
        assert m.takes_token_type_ids(role) == (family == "bert")
    assert m.graphs[FAST].outputs == (LOGITS,) and m.graphs[ATTENTION].outputs == (LOGITS, ATTENTION_PROBS)
    st = m.sentence_transformers
    assert (st["model_type"], st["activation_fn"], st["modules"]) == (
        "CrossEncoder",
        "torch.nn.modules.activation.Sigmoid",
        ["Transformer"],
    )
    assert m.provenance["checkpoint"] == str(directory.resolve())


@pytest.mark.parametrize("role", [FAST, ATTENTION])
def test_scores_equal_cross_encoder_predict_and_rank_alike(saved, role):
    from sentence_transformers import CrossEncoder

    _, directory, artifact = saved
    expected = CrossEncoder(str(directory), device="cpu").predict(PAIRS, batch_size=3)
    ours = OrtCrossEncoder.for_artifact(artifact, role).scores(PAIRS, batch_size=4)[:, 0]
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    assert np.argsort(-ours, kind="stable").tolist() == np.argsort(-expected, kind="stable").tolist()
    assert np.ptp(expected) > 1e-3  # the pairs score differently: the ranking means something


def test_pairs_tokenize_as_transformers_does_including_over_long_ones(saved):
    from transformers import AutoTokenizer

    _, directory, artifact = saved
    theirs = AutoTokenizer.from_pretrained(str(directory))
    ours = pair_tokenizer(artifact.tokenizer_path, artifact.manifest.max_len)  # as the server configures it
    for (a, b), encoding in zip(PAIRS, ours.encode_batch(PAIRS), strict=True):
        reference = theirs(a, b, truncation="longest_first", max_length=artifact.manifest.max_len)
        assert encoding.ids == reference["input_ids"]
        if "token_type_ids" in reference:
            assert encoding.type_ids == reference["token_type_ids"]
    assert len(ours.encode(LONG, LONG).ids) == 12


def test_attention_equals_transformers_eager_attention(saved):
    from transformers import AutoModelForSequenceClassification

    family, directory, artifact = saved
    tokenizer = pair_tokenizer(artifact.tokenizer_path, artifact.manifest.max_len)
    scorer = OrtCrossEncoder.for_artifact(artifact, ATTENTION)
    encodings = tokenizer.encode_batch(PAIRS[:4])
    feeds = scorer.feeds(encodings)
    logits, probs = scorer.session.run([LOGITS, ATTENTION_PROBS], feeds)
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), attn_implementation="eager").eval()
    mask = feeds["attention_mask"]
    pad_id = 1 if family == "mpnet" else 0  # transformers' MPNet reads positions from the pad id
    inputs = {"input_ids": torch.from_numpy(np.where(mask == 1, feeds["input_ids"], pad_id))}
    inputs["attention_mask"] = torch.from_numpy(mask)
    if "token_type_ids" in feeds:
        inputs["token_type_ids"] = torch.from_numpy(feeds["token_type_ids"])
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    theirs = torch.stack(out.attentions, dim=1).numpy()  # (B, L, h, T, T)
    assert probs.shape == theirs.shape == (4, 2, 4, mask.shape[1], mask.shape[1])
    real_rows = np.broadcast_to(mask[:, None, None, :, None] == 1, theirs.shape)
    assert np.abs(probs - theirs)[real_rows].max() <= 1e-4
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=1e-4, rtol=0)


def test_minilm_with_a_fresh_head_saved_by_cross_encoder_loads_key_by_key(tmp_path):
    """all-MiniLM-L6-v2 + a new classifier, as CrossEncoder saves it: the torch model scores as
    CrossEncoder.predict does (the export of this size is checked by `python -m model eval`)."""
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    CrossEncoder(str(default_checkpoint_dir()), num_labels=1, device="cpu").save(str(tmp_path / "ce"))
    reference = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    model = load_cross_encoder(tmp_path / "ce")
    assert model.info.labels == ("LABEL_0",) and model.info.score_activation == "sigmoid"
    encoded = reference.tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])[:, 0]
    expected = reference.predict(PAIRS, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4, rtol=0)
    # the real WordPiece vocabulary, pairs cut longest_first on either side or both at 24 pieces
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "ce"))
    ours = pair_tokenizer(tmp_path / "ce" / "tokenizer.json", 24)
    long = "Unbelievably, the well-known guitarist's performance (in Zürich) was re-scheduled twice! " * 3
    for a, b in [*PAIRS, (long, "short one"), ("short one", long), (long, long[::-1]), ("a", "b")]:
        reference = theirs(a, b, truncation="longest_first", max_length=24)
        encoding = ours.encode(a, b)
        assert (encoding.ids, encoding.type_ids) == (reference["input_ids"], reference["token_type_ids"])

    segment_two = encoded["token_type_ids"].clone().zero_()  # the segment ids matter for a pair
    with torch.no_grad():
        one_segment = model(encoded["input_ids"], encoded["attention_mask"], segment_two)[:, 0]
    assert np.abs(one_segment.numpy() - expected).max() > 1e-3


def test_the_older_layout_without_modules_json_and_several_labels(tmp_path):
    """A plain BertForSequenceClassification directory: labels from id2label, predict's default
    activation for several labels (identity); older sentence-transformers' saved activation is read."""
    directory = write_tiny_bert_classifier(tmp_path / "hf", num_labels=3)
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {"0": "contradiction", "1": "entailment", "2": "neutral"}
    (directory / "config.json").write_text(json.dumps(config))
    artifact = export(directory, tmp_path / "art", "--max-len", "16")
    m = artifact.manifest
    assert (m.task, m.labels, m.score_activation, m.max_len) == (
        "classify",
        ("contradiction", "entailment", "neutral"),
        "identity",
        16,
    )
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    encoded = AutoTokenizer.from_pretrained(str(directory))(
        [a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, truncation=True, max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(**encoded).logits.numpy()
    np.testing.assert_allclose(OrtCrossEncoder.for_artifact(artifact).logits(PAIRS), expected, atol=1e-4, rtol=0)

    config["sbert_ce_default_activation_function"] = "torch.nn.modules.activation.Sigmoid"
    (directory / "config.json").write_text(json.dumps(config))
    assert load_cross_encoder(directory).info.score_activation == "sigmoid"


def test_the_raw_graph_outputs_logits_not_scores(saved):
    _, _, artifact = saved
    scorer = OrtCrossEncoder.for_artifact(artifact)
    logits = scorer.logits(PAIRS)
    np.testing.assert_allclose(scorer.scores(PAIRS), 1 / (1 + np.exp(-logits)), atol=1e-6)
    session = ort.InferenceSession(str(artifact.graph_path(FAST)), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [LOGITS]


def rewrite_json(path: Path, **change) -> None:
    value = json.loads(path.read_text())
    value.update(change)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (
            lambda d: rewrite_json(d / "config.json", architectures=["RobertaForSequenceClassification"]),
            r"architectures \['RobertaForSequenceClassification'\] cannot be reproduced",
        ),
        (
            lambda d: rewrite_json(
                d / "config_sentence_transformers.json", activation_fn="torch.nn.modules.activation.Tanh"
            ),
            "activation_fn 'torch.nn.modules.activation.Tanh' is not supported",
        ),
        (
            lambda d: (d / "modules.json").write_text(
                json.dumps(
                    [
                        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    ]
                )
            ),
            "a cross-encoder must be a single Transformer module",
        ),
        (lambda d: rewrite_json(d / "config.json", id2label={"0": "a", "2": "b"}), r"id2label ids \[0, 2\]"),
        (
            lambda d: save_file(
                {**load_file(str(d / "model.safetensors")), "extra.weight": torch.zeros(2)},
                str(d / "model.safetensors"),
            ),
            "unexpected tensor 'extra.weight'",
        ),
        (
            lambda d: save_file(
                {k: v for k, v in load_file(str(d / "model.safetensors")).items() if "pooler" not in k},
                str(d / "model.safetensors"),
            ),
            "missing tensor 'bert.pooler.dense.weight'",
        ),
    ],
)
def test_what_cannot_be_reproduced_is_refused_by_name(tmp_path, edit, says):
    directory = write_tiny_cross_encoder(tmp_path / "ce")
    edit(directory)
    with pytest.raises(ModelError, match=says):
        load_cross_encoder(directory)


def test_export_refuses_embedder_flags_and_a_tokenizer_without_pairs(tmp_path, capsys):
    directory = write_tiny_cross_encoder(tmp_path / "ce")
    args = ["export", "--checkpoint", str(directory), "--out", str(tmp_path / "art"), "--no-int8"]
    assert main([*args, "--pooling", "mean"]) == 2
    assert "is a cross-encoder: --pooling applies to embedders only" in capsys.readouterr().err
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert main(args) == 2
    assert "it has no pair post-processor" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_model_eval_checks_a_cross_encoder_artifact_against_its_source(saved):
    from model.evaluate import evaluate

    checks = {c.name: c for c in evaluate(saved[2].directory)}
    assert all(c.passed for c in checks.values()), [c.line() for c in checks.values() if not c.passed]
    assert checks["fast graph vs CrossEncoder.predict max |logit diff|"].value <= 1e-4
    assert checks["ranking identical to CrossEncoder.predict, pairs truncated at max_len"].value == 1.0
    assert checks["attention graph vs transformers eager max |prob diff|"].value <= 1e-4
