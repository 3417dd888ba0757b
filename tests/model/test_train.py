"""Training jobs on tiny synthetic data: the loss falls, a SIGKILLed run resumes to the same
result, bad data is refused with file:line, and every job's artifact loads, matches the torch
model and is served by the real server."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from artifact.manifest import ATTENTION, FAST, Artifact, sha256_of
from model.__main__ import build_parser, main
from model.config import EncoderConfig
from model.data import read_sts
from model.encoder import Encoder
from model.errors import ModelError
from model.evaluate import OrtEmbedder
from model.tokenizer import checkpoint_max_len
from model.train.cli import from_args
from model.train.config import FinetuneConfig, JobConfig, PretrainConfig, TrainConfig
from model.train.losses import cosent_loss, cosine_loss, in_batch_negatives_loss
from model.train.student import kept_layers, student_of
from model.train.tasks import embed, sts_spearman
from model.weights import load_checkpoint
from tests.support.server import REPO, launch

SUBJECTS = ["a man", "a woman", "the child", "a dog", "the cat", "a chef", "the girl", "an old farmer"]
VERBS = ["is playing", "is eating", "is riding", "is cutting", "is holding", "is washing"]
OBJECTS = ["a guitar", "an apple", "a horse", "some bread", "a red ball", "the piano", "a bike", "a tomato"]
PROBE = ["a man is playing a guitar.", "the cat is eating some bread.", "an old farmer is riding a horse."]
CPU = torch.device("cpu")
THREADS = 1  # every run of a comparison uses the same, so sums add up in one order; tiny models run best on one


def sentence(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(len(SUBJECTS)), rng.randrange(len(VERBS)), rng.randrange(len(OBJECTS))


def text(parts: tuple[int, int, int]) -> str:
    return f"{SUBJECTS[parts[0]]} {VERBS[parts[1]]} {OBJECTS[parts[2]]}."


def write_sts(path: Path, n: int, seed: int) -> Path:
    """Scored pairs in STS Benchmark columns; the score is 5 x the share of parts two sentences share."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = sentence(rng)
        b = tuple(x if rng.random() < 0.5 else y for x, y in zip(a, sentence(rng), strict=True))
        score = 5.0 * sum(x == y for x, y in zip(a, b, strict=True)) / 3
        rows.append(f"synthetic\tparts\t2026\t{i:04d}\t{score:.3f}\t{text(a)}\t{text(b)}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    corpus = [text(sentence(rng)) for _ in range(160)]
    (root / "corpus.txt").write_text("\n".join(corpus) + "\n\n")
    (root / "dev.txt").write_text("\n".join(text(sentence(rng)) for _ in range(32)) + "\n")
    pairs = []
    for _ in range(64):
        a = sentence(rng)
        pairs.append(f"{text(a)}\t{text((a[0], a[1], rng.randrange(len(OBJECTS))))}")  # same subject and verb
    (root / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    return {
        "corpus": root / "corpus.txt",
        "corpus_dev": root / "dev.txt",
        "pairs": root / "pairs.tsv",
        "train": write_sts(root / "train.csv", 96, seed=1),
        "dev": write_sts(root / "dev.csv", 48, seed=2),
        "test": write_sts(root / "test.csv", 48, seed=3),
    }


def pretrain_args(data: dict[str, Path], root: Path, *extra: str) -> list[str]:
    return [
        "train", "pretrain", "--corpus", str(data["corpus"]), "--dev", str(data["corpus_dev"]),
        "--out", str(root / "artifact"), "--run-dir", str(root / "run"), "--name", "tiny-mlm",
        "--vocab-size", "120", "--d-model", "32", "--heads", "2", "--layers", "2", "--d-ff", "64",
        "--max-len", "24", "--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--save-every", "4",
        "--no-int8", "--threads", str(THREADS), *extra,
    ]  # fmt: skip


def finetune_args(data: dict[str, Path], root: Path, base: Path, *extra: str) -> list[str]:
    return [
        "train", "finetune", "--artifact", str(base), "--train", str(data["train"]), "--dev", str(data["dev"]),
        "--test", str(data["test"]), "--out", str(root / "artifact"), "--run-dir", str(root / "run"),
        "--name", "tiny-sts", "--epochs", "20", "--batch-size", "16", "--lr", "3e-3", "--save-every", "4",
        "--no-int8", "--threads", str(THREADS), *extra,
    ]  # fmt: skip


def distill_args(data: dict[str, Path], root: Path, teacher: Path, *extra: str) -> list[str]:
    return [
        "train", "distill", "--teacher", str(teacher), "--train", str(data["train"]), "--dev", str(data["dev"]),
        "--test", str(data["test"]), "--out", str(root / "artifact"), "--run-dir", str(root / "run"),
        "--name", "tiny-student", "--layers", "1", "--epochs", "6", "--batch-size", "16", "--lr", "3e-3",
        "--save-every", "4", "--no-int8", "--threads", str(THREADS), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> Path:
    """A tiny encoder pre-trained from scratch; its directory holds run/ and artifact/."""
    root = tmp_path_factory.mktemp("pretrain")
    assert main(pretrain_args(data, root, "--dropout", "0")) == 0  # so fine-tuning from it learns in few steps
    return root


@pytest.fixture(scope="module")
def finetuned(data, pretrained, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    assert main(finetune_args(data, root, pretrained / "artifact")) == 0
    return root


@pytest.fixture(scope="module")
def distilled(data, pretrained, tmp_path_factory) -> Path:
    """A one-layer student of the tiny pre-trained encoder (two layers)."""
    root = tmp_path_factory.mktemp("distill")
    assert main(distill_args(data, root, pretrained / "artifact")) == 0
    return root


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "dev" in r]


def mean_loss(steps: list[dict]) -> float:
    return float(np.mean([r["loss"] for r in steps]))


def assert_artifact_matches_torch(directory: Path) -> Artifact:
    """The artifact passes the server's checks and its fast graph gives the torch model's vectors."""
    artifact = Artifact.load(directory)
    encoder = load_checkpoint(Path(artifact.manifest.provenance["checkpoint"]))
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    expected = embed(encoder, [e.ids for e in tokenizer.encode_batch(PROBE)], CPU)
    for role in (FAST, ATTENTION):
        vectors = OrtEmbedder(artifact.graph_path(role), tokenizer).embed(PROBE)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
    return artifact


# the two jobs ------------------------------------------------------------------------------


def test_pretrain_loss_falls_and_exports_a_sinusoidal_encoder(data, pretrained):
    steps, evaluations = metrics(pretrained / "run")
    assert [r["step"] for r in steps] == list(range(1, 21))  # 160 texts / 16, two epochs
    assert mean_loss(steps[-4:]) < mean_loss(steps[:4]) - 0.5
    assert evaluations[-1]["dev"] < evaluations[0]["dev"]

    artifact = assert_artifact_matches_torch(pretrained / "artifact")
    manifest = artifact.manifest
    assert manifest.name == "tiny-mlm"
    assert manifest.encoder_config["positions"] == "sinusoidal"
    assert manifest.graphs[FAST].fusions["Attention"] == 2
    provenance = manifest.provenance
    assert provenance["data"]["corpus"]["sha256"] == sha256_of(data["corpus"])
    assert provenance["data"]["corpus"]["rows"] == 160  # the blank line is skipped
    assert provenance["hyperparameters"]["d_model"] == 32
    assert provenance["scores"]["dev_mlm_loss"] == round(min(r["dev"] for r in evaluations), 4)


def test_finetune_from_an_artifact_improves_dev_and_records_provenance(data, pretrained, finetuned):
    steps, evaluations = metrics(finetuned / "run")
    assert mean_loss(steps[-3:]) < mean_loss(steps[:3])
    artifact = assert_artifact_matches_torch(finetuned / "artifact")
    provenance = artifact.manifest.provenance
    assert checkpoint_max_len(finetuned / "run" / "best", 0) == artifact.manifest.max_len  # kept for re-export
    assert provenance["base_model"]["artifact"] == str((pretrained / "artifact").resolve())
    assert provenance["base_model"]["checkpoint"] == str((pretrained / "run" / "best").resolve())
    for role in ("train", "dev", "test"):
        assert provenance["data"][role]["sha256"] == sha256_of(data[role])
    assert provenance["hyperparameters"]["lr"] == 3e-3
    assert provenance["hyperparameters"]["loss"] == "cosent"
    scores = provenance["scores"]
    assert scores["dev_spearman"] == round(max(r["dev"] for r in evaluations), 3)
    base = load_checkpoint(pretrained / "run" / "best")
    base_dev = sts_spearman(base, Tokenizer.from_file(str(artifact.tokenizer_path)), read_sts(data["dev"]), CPU)
    assert scores["dev_spearman"] > base_dev + 3
    assert 0 < scores["test_spearman"] <= 100


def test_finetune_on_unscored_pairs_with_in_batch_negatives(data, pretrained, tmp_path):
    args = finetune_args(data, tmp_path, pretrained / "artifact", "--format", "pairs")
    args[args.index("--train") + 1] = str(data["pairs"])
    assert main(args) == 0
    steps, _ = metrics(tmp_path / "run")
    assert mean_loss(steps[-3:]) < mean_loss(steps[:3])
    assert Artifact.load(tmp_path / "artifact").manifest.provenance["hyperparameters"]["loss"] == "in-batch"


def test_a_student_is_the_teachers_embeddings_and_kept_layers():
    assert kept_layers(6, 3) == [0, 3, 5] and kept_layers(6, 2) == [0, 5] and kept_layers(6, 1) == [5]
    assert kept_layers(12, 4) == [0, 4, 7, 11]
    with pytest.raises(ModelError, match="--layers must be between 1 and 5"):
        kept_layers(6, 6)
    torch.manual_seed(0)
    teacher = Encoder(EncoderConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=4, d_ff=32, max_len=12)).eval()
    student = student_of(teacher, [0, 3]).eval()
    assert student.config.n_layers == 2 and teacher.config.n_layers == 4
    for ours, theirs in ((student.layers[0], teacher.layers[0]), (student.layers[1], teacher.layers[3])):
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    ids, mask = torch.randint(1, 40, (2, 7)), torch.ones(2, 7, dtype=torch.int64)
    with torch.no_grad():  # every layer kept: the teacher's function exactly
        torch.testing.assert_close(student_of(teacher, [0, 1, 2, 3]).eval()(ids, mask), teacher(ids, mask))


def test_distill_trains_a_student_toward_the_teachers_served_vectors(data, pretrained, distilled):
    steps, evaluations = metrics(distilled / "run")
    assert [r["step"] for r in steps] == list(range(1, 37))  # 96 pairs / 16, six epochs
    assert mean_loss(steps[-3:]) < mean_loss(steps[:3])
    artifact = assert_artifact_matches_torch(distilled / "artifact")
    assert artifact.manifest.n_layers == 1 and artifact.manifest.d_model == 32
    provenance = artifact.manifest.provenance
    teacher_artifact = Artifact.load(pretrained / "artifact")
    assert provenance["job"] == "distill"
    assert provenance["teacher"]["artifact"] == str((pretrained / "artifact").resolve())
    assert provenance["teacher"]["fast_graph_sha256"] == teacher_artifact.manifest.files["fast.onnx"]
    assert provenance["hyperparameters"]["layers"] == [1]
    assert provenance["scores"]["dev_spearman"] == round(max(r["dev"] for r in evaluations), 3)

    sentences = sorted({p.sentence1 for p in read_sts(data["train"])})
    teacher = OrtEmbedder.for_artifact(teacher_artifact).embed(sentences)
    trained = OrtEmbedder.for_artifact(artifact).embed(sentences)
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    initial = student_of(load_checkpoint(pretrained / "run" / "best"), [1])
    untrained = embed(initial, [e.ids for e in tokenizer.encode_batch(sentences)], CPU)
    # 1 - cosine to the teacher's vectors: at least halved by training
    assert np.mean(1 - np.sum(trained * teacher, 1)) < 0.5 * np.mean(1 - np.sum(untrained * teacher, 1))


def test_distill_refuses_a_teacher_it_cannot_reproduce(data, pretrained, tmp_path, capsys):
    assert main(distill_args(data, tmp_path, pretrained / "artifact", "--layers", "2")) == 2
    assert "--layers must be between 1 and 1 (the teacher has 2)" in capsys.readouterr().err


def test_losses_equal_sentence_transformers_on_the_same_embeddings():
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
    scores = torch.tensor([0.0, 1.2, 3.4, 5.0, 1.2, 2.2, 4.0, 0.4]) / 5  # with a tie
    for ours, theirs in [
        (cosent_loss, losses.CoSENTLoss),
        (cosine_loss, losses.CosineSimilarityLoss),
        (in_batch_negatives_loss, losses.MultipleNegativesRankingLoss),
    ]:
        expected = theirs(None).compute_loss_from_embeddings([u, v], scores)
        torch.testing.assert_close(ours(u, v, scores), expected, rtol=1e-6, atol=1e-6)


# resume ------------------------------------------------------------------------------------

DIE_AT_STEP = """
import os, signal, sys
from model.__main__ import main
from model.train.trainer import Trainer

die_at, argv = int(sys.argv[1]), sys.argv[2:]
take_step = Trainer.train_step

def train_step(self, indices, step):
    if step + 1 == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return take_step(self, indices, step)

Trainer.train_step = train_step
sys.exit(main(argv))
"""


@pytest.mark.parametrize("job", ["pretrain", "finetune", "distill"])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(job, data, pretrained, tmp_path):
    def args(root: Path) -> list[str]:
        if job == "pretrain":
            return pretrain_args(data, root)
        if job == "distill":
            return distill_args(data, root, pretrained / "artifact", "--epochs", "2")
        return finetune_args(data, root, pretrained / "artifact", "--epochs", "2")

    # pretrain: 10 steps an epoch, killed before step 15, so the checkpoint of step 12 (epoch 2,
    # batch 2) is the latest; finetune and distill: 6 steps an epoch, killed before step 11, checkpoint 8
    die_at, saved_at = (15, 12) if job == "pretrain" else (11, 8)
    killed = subprocess.run(
        [sys.executable, "-c", DIE_AT_STEP, str(die_at), *args(tmp_path / "killed")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "killed" / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["progress"]["step"] == saved_at and checkpoint["progress"]["epoch"] == 1
    assert not (tmp_path / "killed" / "artifact").exists()

    assert main([*args(tmp_path / "killed"), "--resume"]) == 0
    assert main(args(tmp_path / "whole")) == 0

    resumed_steps, resumed_evals = metrics(tmp_path / "killed" / "run")
    whole_steps, whole_evals = metrics(tmp_path / "whole" / "run")
    assert [r["step"] for r in resumed_steps] == [r["step"] for r in whole_steps]  # no step twice
    np.testing.assert_allclose([r["loss"] for r in resumed_steps], [r["loss"] for r in whole_steps], atol=1e-5)
    np.testing.assert_allclose([r["dev"] for r in resumed_evals], [r["dev"] for r in whole_evals], atol=1e-5)
    resumed = load_file(tmp_path / "killed" / "run" / "best" / "encoder.safetensors")
    whole = load_file(tmp_path / "whole" / "run" / "best" / "encoder.safetensors")
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-5, rtol=0)
    resumed_scores = Artifact.load(tmp_path / "killed" / "artifact").manifest.provenance["scores"]
    assert resumed_scores == Artifact.load(tmp_path / "whole" / "artifact").manifest.provenance["scores"]


def test_a_run_directory_is_never_reused_silently(data, pretrained, capsys):
    run_dir = pretrained / "run"
    assert main(pretrain_args(data, pretrained)) == 2
    assert "holds a checkpoint of an earlier run: pass --resume" in capsys.readouterr().err
    assert main([*pretrain_args(data, pretrained), "--resume", "--lr", "1e-3"]) == 2
    assert "hyperparameters.lr (0.003 -> 0.001)" in capsys.readouterr().err
    assert (run_dir / "checkpoint.pt").exists() and (pretrained / "artifact" / "manifest.json").exists()


# command line ------------------------------------------------------------------------------


def test_the_flags_are_the_config_fields():
    """The parser is derived from the configs: a bare command line gives their defaults, and
    `make finetune-stsb`'s flags land in the fields they name."""
    args = build_parser().parse_args(["train", "pretrain", "--corpus", "c.txt", "--out", "o"])
    assert from_args(PretrainConfig, args) == PretrainConfig(corpus=Path("c.txt"))
    assert from_args(TrainConfig, args) == TrainConfig(epochs=10, batch_size=32, lr=5e-4)
    assert from_args(JobConfig, args) == JobConfig(out=Path("o"))

    argv = "train finetune --train t.csv --dev d.csv --test s.csv --out o --name n --loss cosent --epochs 4"
    argv += " --batch-size 16 --lr 2e-5 --max-len 128 --threads 2 --resume --no-int8 --score-range 1 4"
    args = build_parser().parse_args(argv.split())
    assert from_args(FinetuneConfig, args) == FinetuneConfig(
        train_file=Path("t.csv"), dev_file=Path("d.csv"), test_file=Path("s.csv"), loss="cosent", score_range=(1, 4)
    )
    assert from_args(TrainConfig, args) == TrainConfig(epochs=4, batch_size=16, lr=2e-5, max_len=128, threads=2)
    assert from_args(JobConfig, args) == JobConfig(out=Path("o"), name="n", resume=True, int8=False)


# bad data ----------------------------------------------------------------------------------


def corrupt(path: Path, line_no: int, replacement: bytes, tmp_path: Path) -> Path:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line_no - 1] = replacement
    bad = tmp_path / ("bad-" + path.name)
    bad.write_bytes(b"".join(lines))
    return bad


@pytest.mark.parametrize(
    ("source", "line_no", "replacement", "message"),
    [
        ("train", 3, b"only\ttwo columns\n", ":3: expected 7 tab-separated columns, found 2"),
        ("train", 5, b"g\tf\t2026\t1\t7.5\ta dog.\ta cat.\n", ":5: score 7.5 outside [0.0, 5.0]"),
        ("dev", 2, b"g\tf\t2026\t1\tfive\ta dog.\ta cat.\n", ":2: score 'five' is not a number"),
        ("pairs", 4, b"anchor only\n", ":4: expected 2 tab-separated columns (anchor, positive), found 1"),
        ("corpus", 6, b"caf\xe9 latin-1\n", ":6: not UTF-8 text"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(data, tmp_path, capsys, source, line_no, replacement, message):
    bad = corrupt(data[source], line_no, replacement, tmp_path)
    args = {
        "train": ["finetune", "--train", str(bad)],
        "dev": ["finetune", "--train", str(data["train"]), "--dev", str(bad)],
        "pairs": ["finetune", "--train", str(bad), "--format", "pairs"],
        "corpus": ["pretrain", "--corpus", str(bad)],
    }[source]
    assert main(["train", *args, "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}{message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before any work


def test_an_empty_corpus_is_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    result = subprocess.run(
        [sys.executable, "-m", "model", "train", "pretrain", "--corpus", str(empty), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {empty}: empty corpus (no non-blank lines)\n"


# served ------------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["pretrained", "finetuned", "distilled"])
def test_the_server_serves_a_trained_artifact_with_the_torch_vectors(job, request):
    root = request.getfixturevalue(job)
    artifact = Artifact.load(root / "artifact")
    encoder = load_checkpoint(Path(artifact.manifest.provenance["checkpoint"]))
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    expected = embed(encoder, [e.ids for e in tokenizer.encode_batch(PROBE)], CPU)
    server = launch(model_dir=root / "artifact")
    try:
        response = httpx.post(server.url + "/v1/embed", json={"inputs": PROBE}, timeout=30)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == artifact.manifest.name
    np.testing.assert_allclose(body["embeddings"], expected, atol=1e-5)
