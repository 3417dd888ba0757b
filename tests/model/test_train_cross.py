"""python -m model train finetune-cross on tiny synthetic pairs: dev improves, the best epoch is
exported as a cross-encoder artifact that scores as the trained torch model, a SIGKILLed run
resumes to the uninterrupted result, and batches are grouped by length."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from artifact.manifest import ATTENTION, FAST, Artifact, sha256_of
from model.__main__ import main
from model.cross_encoder import load_cross_encoder
from model.data import read_sts
from model.evaluate import OrtCrossEncoder, artifact_sts_spearman, pair_tokenizer, spearman
from model.train.tasks import cross_sts_spearman, pair_logits
from model.train.trainer import LENGTH_WINDOW
from tests.model.test_train import DIE_AT_STEP, mean_loss, metrics
from tests.support.cross_encoder import write_tiny_bert_classifier
from tests.support.server import REPO

SUBJECTS = ["a man", "a woman", "the child", "a dog"]
VERBS = ["plays", "runs", "is playing"]
OBJECTS = ["guitar", "piano", "in the park", "quickly", "slowly on the park"]


def write_pairs(path: Path, n: int, seed: int) -> Path:
    """Scored pairs in STS Benchmark columns over the tiny vocabulary: 5 x the share of parts in common."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = [rng.randrange(len(SUBJECTS)), rng.randrange(len(VERBS)), rng.randrange(len(OBJECTS))]
        b = [x if rng.random() < 0.5 else rng.randrange(k) for x, k in zip(a, (4, 3, 5), strict=True)]
        score = 5.0 * sum(x == y for x, y in zip(a, b, strict=True)) / 3
        first, second = (f"{SUBJECTS[s[0]]} {VERBS[s[1]]} {OBJECTS[s[2]]}" for s in (a, b))
        rows.append(f"synthetic\tparts\t2026\t{i:04d}\t{score:.3f}\t{first}\t{second}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return {
        "train": write_pairs(root / "train.csv", 96, seed=1),
        "dev": write_pairs(root / "dev.csv", 48, seed=2),
        "test": write_pairs(root / "test.csv", 48, seed=3),
        "base": write_tiny_bert_classifier(root / "base", std=0.02, dropout=0.0),
    }


def args(data: dict[str, Path], root: Path, *extra: str) -> list[str]:
    return [
        "train", "finetune-cross", "--checkpoint", str(data["base"]), "--train", str(data["train"]),
        "--dev", str(data["dev"]), "--test", str(data["test"]), "--out", str(root / "artifact"),
        "--run-dir", str(root / "run"), "--name", "tiny-cross", "--epochs", "12", "--batch-size", "16",
        "--lr", "1e-3", "--save-every", "4", "--no-int8", "--threads", "1", "--both-orders", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cross")
    assert main(args(data, root)) == 0
    return root


def test_training_improves_dev_and_exports_what_it_trained(data, trained):
    steps, evaluations = metrics(trained / "run")
    assert [r["step"] for r in steps] == list(range(1, 12 * 12 + 1))  # 96 pairs in both orders / 16, 12 epochs
    assert mean_loss(steps[-12:]) < mean_loss(steps[:12])
    artifact = Artifact.load(trained / "artifact")
    m = artifact.manifest
    assert (m.format_version, m.task, m.labels, m.score_activation, m.name) == (
        3,
        "rerank",
        ("LABEL_0",),
        "sigmoid",
        "tiny-cross",
    )
    provenance = m.provenance
    assert provenance["hyperparameters"]["both_orders"] is True
    assert provenance["hyperparameters"]["loss"] == "bce-with-logits"
    assert provenance["data"]["train"]["sha256"] == sha256_of(data["train"])
    scores = provenance["scores"]
    assert scores["dev_spearman"] == round(max(r["dev"] for r in evaluations), 3)
    tokenizer = pair_tokenizer(artifact.tokenizer_path, m.max_len)
    base_dev = cross_sts_spearman(load_cross_encoder(data["base"]), tokenizer, read_sts(data["dev"]), "cpu")
    assert scores["dev_spearman"] > base_dev + 10

    best = load_cross_encoder(trained / "run" / "best")
    pairs = [(p.sentence1, p.sentence2) for p in read_sts(data["test"])]
    expected = pair_logits(best, tokenizer.encode_batch(pairs), torch.device("cpu"))
    for role in (FAST, ATTENTION):
        served_logits = OrtCrossEncoder.for_artifact(artifact, role).logits(pairs)
        np.testing.assert_allclose(served_logits, expected, atol=1e-4)
        assert np.abs(served_logits - expected).max() < np.ptp(expected) / 10  # also next to their spread
    # the recorded test figure is the kept model's (torch). Its onnxruntime twin is not compared
    # with it: this tiny model's logits span about 1e-5, so the runtimes' 1e-7 differences reorder
    # the repeated synthetic pairs and move Spearman by whole points; the logits are compared above,
    # against that spread.
    gold = np.array([p.score for p in read_sts(data["test"])])
    assert scores["test_spearman"] == round(100.0 * spearman(expected[:, 0], gold), 3)
    served = artifact_sts_spearman(artifact, read_sts(data["test"]))
    recorded = json.loads((trained / "run" / "scores.json").read_text())
    assert recorded["test_spearman_onnxruntime"] == pytest.approx(served, abs=1e-3)


def test_a_killed_run_resumes_to_the_uninterrupted_result(data, tmp_path):
    def run_args(root: Path) -> list[str]:
        return args(data, root, "--epochs", "2")

    killed = subprocess.run(
        [sys.executable, "-c", DIE_AT_STEP, "15", *run_args(tmp_path / "killed")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "killed" / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["progress"]["step"] == 12 and checkpoint["progress"]["epoch"] == 1
    assert main([*run_args(tmp_path / "killed"), "--resume"]) == 0
    assert main(run_args(tmp_path / "whole")) == 0
    resumed_steps, _ = metrics(tmp_path / "killed" / "run")
    whole_steps, _ = metrics(tmp_path / "whole" / "run")
    np.testing.assert_allclose([r["loss"] for r in resumed_steps], [r["loss"] for r in whole_steps], atol=1e-5)
    resumed = load_file(tmp_path / "killed" / "run" / "best" / "cross_encoder.safetensors")
    whole = load_file(tmp_path / "whole" / "run" / "best" / "cross_encoder.safetensors")
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-5, rtol=0)


def test_batches_are_grouped_by_length_and_cover_every_example_once():
    from model.train.config import JobConfig, TrainConfig
    from model.train.trainer import Trainer

    class Lengths:
        """Just enough of a task for the trainer's batching."""

        def __init__(self, lengths: list[int]):
            self.lengths = lengths
            self.encoder = torch.nn.Linear(1, 1)
            self.modules = {"encoder": self.encoder}

        def __len__(self) -> int:
            return len(self.lengths)

    lengths = [random.Random(0).randrange(5, 60) for _ in range(4 * 16 * LENGTH_WINDOW)]
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=7)
    trainer = Trainer(Lengths(lengths), config, JobConfig(out=Path("unused")), {}, Path("t.json"), 8)
    for epoch in (0, 1):
        batches = trainer.epoch_batches(epoch)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
        assert spread < 3  # a random batch of 16 spans about 50 tokens here
        assert batches == trainer.epoch_batches(epoch)  # the seed and the epoch decide the order
    assert trainer.epoch_batches(0) != trainer.epoch_batches(1)
