"""The jobs, end to end: read and check the data, build the task, fit, export the best epoch.

finetune adapts a pretrained encoder to sentence pairs; finetune_cross trains a cross-encoder
(the encoder plus a pooler and classifier) on scored pairs read together; distill trains a
smaller student, made of a teacher's layers, to reproduce the teacher's served vectors;
pretrain trains a WordPiece tokenizer and an encoder from scratch with masked-LM. Each returns
the provenance its artifact records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from artifact.manifest import FAST, Artifact, sha256_of
from model.config import EncoderConfig
from model.cross_encoder import (
    CrossEncoder,
    checkpoint_pooler,
    from_encoder,
    is_cross_encoder_dir,
    load_cross_encoder,
)
from model.data import unique_sentences
from model.encoder import Encoder
from model.errors import ModelError
from model.export import ExportOptions, export_artifact, export_cross_encoder
from model.tokenizer import checkpoint_max_len, load_tokenizer, train_wordpiece
from model.train.config import (
    CrossFinetuneConfig,
    DistillConfig,
    FinetuneConfig,
    JobConfig,
    PretrainConfig,
    TrainConfig,
)
from model.train.data import describe, read_corpus, read_pairs, read_scored
from model.train.student import kept_layers, student_of
from model.train.tasks import (
    CrossPairTask,
    DistillTask,
    MaskedLMTask,
    PairTask,
    cross_sts_spearman,
    sts_spearman,
)
from model.train.trainer import Progress, Trainer, pick_device
from model.weights import (
    DEFAULT_SOURCE,
    NATIVE_CONFIG,
    NATIVE_WEIGHTS,
    default_checkpoint_dir,
    load_checkpoint,
)

log = logging.getLogger(__name__)


def prepare(config: TrainConfig, job: JobConfig) -> torch.device:
    """Device, threads, seed and the run directory, before anything random happens."""
    if not job.resume and (job.run_path / "checkpoint.pt").exists():
        raise ModelError(
            f"{job.run_path} holds a checkpoint of an earlier run: pass --resume to continue it, or remove it"
        )
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    job.run_path.mkdir(parents=True, exist_ok=True)
    return device


def resolve_base(data: FinetuneConfig) -> tuple[Path, Path, int | None, dict]:
    """The checkpoint to start from, its tokenizer, the artifact's max_len if any, and its provenance."""
    if data.artifact:
        return artifact_base(Path(data.artifact))
    else:
        checkpoint = Path(data.checkpoint) if data.checkpoint else default_checkpoint_dir()
        base = {} if data.checkpoint else {"source": DEFAULT_SOURCE}
        tokenizer_json, max_len = checkpoint / "tokenizer.json", None
    return checkpoint, tokenizer_json, max_len, with_weights(base, checkpoint)


def artifact_base(directory: Path) -> tuple[Path, Path, int, dict]:
    """An artifact's source checkpoint, its tokenizer, its max_len, and what provenance records of it."""
    artifact = Artifact.load(directory)
    checkpoint = Path(artifact.manifest.provenance.get("checkpoint", ""))
    if not (checkpoint / NATIVE_CONFIG).exists() and not (checkpoint / "config.json").exists():
        raise ModelError(f"{directory}: its source checkpoint {str(checkpoint)!r} is not on this machine")
    manifest = artifact.manifest
    base = {"artifact": str(Path(directory).resolve()), "name": manifest.name, "version": manifest.version}
    base.update({k: v for k, v in manifest.provenance.items() if k in ("source", "base_model")})
    return checkpoint, artifact.tokenizer_path, manifest.max_len, with_weights(base, checkpoint)


def with_weights(base: dict, checkpoint: Path) -> dict:
    weights = checkpoint / (NATIVE_WEIGHTS if (checkpoint / NATIVE_CONFIG).exists() else "model.safetensors")
    return {
        **base,
        "checkpoint": str(checkpoint.resolve()),
        "weights_sha256": sha256_of(weights) if weights.is_file() else None,
    }


def finetune(config: TrainConfig, data: FinetuneConfig, job: JobConfig) -> dict:
    """Adapt a pretrained encoder to sentence pairs; returns the exported artifact's provenance."""
    started = time.monotonic()
    if data.checkpoint and data.artifact:
        raise ModelError("give --checkpoint or --artifact, not both")
    low, high = data.score_range
    if low >= high:
        raise ModelError(f"--score-range: minimum {low} must be below maximum {high}")
    if (data.loss_name == "in-batch") != (data.data_format == "pairs"):
        needs = "--format pairs" if data.loss_name == "in-batch" else "scored pairs (--format sts)"
        raise ModelError(f"--loss {data.loss_name} needs {needs}")
    # data first: a bad row should cost seconds, not a model load
    pairs = read_scored(data.train_file, data.score_range) if data.data_format == "sts" else read_pairs(data.train_file)
    files = {"train": describe(data.train_file, len(pairs))}
    dev = test = None
    if data.dev_file:
        dev = read_scored(data.dev_file, data.score_range)
        files["dev"] = describe(data.dev_file, len(dev))
    if data.test_file:
        test = read_scored(data.test_file, data.score_range)
        files["test"] = describe(data.test_file, len(test))

    checkpoint, tokenizer_json, export_max_len, base = resolve_base(data)

    device = prepare(config, job)
    encoder = load_checkpoint(checkpoint).to(device)
    export_max_len = export_max_len or checkpoint_max_len(checkpoint, encoder.config.max_len)
    train_max_len = min(config.max_len, export_max_len)
    eval_tokenizer = load_tokenizer(tokenizer_json, export_max_len)
    task = PairTask(
        encoder,
        load_tokenizer(tokenizer_json, train_max_len),
        eval_tokenizer,
        pairs,
        data.loss_name,
        data.score_range,
        dev,
        device,
    )
    hyperparameters = {
        **config.hyperparameters(),
        "loss": data.loss_name,
        "format": data.data_format,
        "score_range": list(data.score_range),
    }
    fingerprint = {
        "job": "finetune",
        "base": {k: base[k] for k in ("checkpoint", "weights_sha256")},
        "data": {role: f.sha256 for role, f in files.items() if role != "test"},
        "hyperparameters": hyperparameters,
    }
    trainer = Trainer(task, config, job, fingerprint, tokenizer_json, export_max_len)
    log.info(
        "fine-tuning %s on %d pairs (%s loss), %d steps on %s",
        checkpoint,
        len(pairs),
        data.loss_name,
        trainer.total_steps,
        device,
    )
    progress = trainer.fit()

    best, scores = best_and_scores(trainer, progress, "dev_spearman", 3, device)
    if test is not None:
        scores["test_spearman"] = round(sts_spearman(best, eval_tokenizer, test, device), 3)
    provenance = run_provenance("finetune", trainer, files, hyperparameters, scores, started, device, base_model=base)
    log.info("selected epoch %s: %s", progress.best_epoch, scores)
    export(best, trainer.best_dir / "tokenizer.json", job, export_max_len, provenance)
    return provenance


def read_scored_splits(data: CrossFinetuneConfig | DistillConfig) -> tuple[list, list | None, list | None, dict]:
    """The scored train pairs, and dev and test where given, with a description of each file."""
    low, high = data.score_range
    if low >= high:
        raise ModelError(f"--score-range: minimum {low} must be below maximum {high}")
    pairs = read_scored(data.train_file, data.score_range)
    files = {"train": describe(data.train_file, len(pairs))}
    dev = test = None
    if data.dev_file:
        dev = read_scored(data.dev_file, data.score_range)
        files["dev"] = describe(data.dev_file, len(dev))
    if data.test_file:
        test = read_scored(data.test_file, data.score_range)
        files["test"] = describe(data.test_file, len(test))
    return pairs, dev, test, files


def distill(config: TrainConfig, data: DistillConfig, job: JobConfig) -> dict:
    """Train a student of the teacher's width and fewer of its layers on the teacher's served vectors."""
    from model.evaluate import OrtEmbedder  # onnxruntime: the teacher's vectors are the ones it serves

    started = time.monotonic()
    pairs, dev, test, files = read_scored_splits(data)

    checkpoint, tokenizer_json, export_max_len, teacher_base = artifact_base(Path(data.teacher))
    teacher_artifact = Artifact.load(data.teacher)
    manifest = teacher_artifact.manifest
    if manifest.pooling != "mean" or manifest.dense or not manifest.normalize:
        raise ModelError(
            f"{data.teacher}: the student is an encoder served mean-pooled and normalised; this teacher serves "
            f"pooling {manifest.pooling!r}{' with Dense layers' if manifest.dense else ''}"
            f"{'' if manifest.normalize else ' without normalising'}: give a mean-pooled teacher"
        )
    teacher_base["fast_graph_sha256"] = manifest.files[manifest.graphs[FAST].file]

    device = prepare(config, job)
    teacher = load_checkpoint(checkpoint)
    layers = kept_layers(teacher.config.n_layers, data.n_layers)
    student = student_of(teacher, layers).to(device)
    del teacher
    sentences = unique_sentences(pairs)
    took = time.monotonic()
    vectors = OrtEmbedder.for_artifact(teacher_artifact, threads=config.threads or 0).embed(sentences)
    log.info("teacher vectors of %d sentences in %.0f s", len(sentences), time.monotonic() - took)
    train_max_len = min(config.max_len, export_max_len)
    eval_tokenizer = load_tokenizer(tokenizer_json, export_max_len)
    task = DistillTask(
        student,
        load_tokenizer(tokenizer_json, train_max_len),
        eval_tokenizer,
        pairs,
        dict(zip(sentences, vectors, strict=True)),
        data.cosent_weight,
        data.score_range,
        dev,
        device,
    )
    hyperparameters = {
        **config.hyperparameters(),
        "layers": layers,
        "cosent_weight": data.cosent_weight,
        "score_range": list(data.score_range),
    }
    fingerprint = {
        "job": "distill",
        "teacher": {k: teacher_base[k] for k in ("checkpoint", "weights_sha256", "fast_graph_sha256")},
        "data": {role: f.sha256 for role, f in files.items() if role != "test"},
        "hyperparameters": hyperparameters,
    }
    trainer = Trainer(task, config, job, fingerprint, tokenizer_json, export_max_len)
    log.info(
        "distilling %s (%d layers) into %d of its layers %s on %d pairs, %d steps on %s",
        data.teacher, manifest.n_layers, len(layers), layers, len(pairs), trainer.total_steps, device,
    )  # fmt: skip
    progress = trainer.fit()

    best, scores = best_and_scores(trainer, progress, "dev_spearman", 3, device)
    if test is not None:
        scores["test_spearman"] = round(sts_spearman(best, eval_tokenizer, test, device), 3)
    provenance = run_provenance(
        "distill", trainer, files, hyperparameters, scores, started, device, teacher=teacher_base
    )
    log.info("selected epoch %s: %s", progress.best_epoch, scores)
    export(best, trainer.best_dir / "tokenizer.json", job, export_max_len, provenance)
    return provenance


def cross_base(checkpoint: Path) -> tuple[CrossEncoder, dict]:
    """A cross-encoder checkpoint as it is, or an encoder with its pooler and a fresh classifier."""
    if is_cross_encoder_dir(checkpoint):
        return load_cross_encoder(checkpoint), {"head": "from the checkpoint"}
    pooler = checkpoint_pooler(checkpoint)
    model = from_encoder(load_checkpoint(checkpoint), pooler)
    return model, {"head": "pretrained pooler, new classifier" if pooler else "new pooler and classifier"}


def finetune_cross(config: TrainConfig, data: CrossFinetuneConfig, job: JobConfig) -> dict:
    """Train a cross-encoder on scored pairs; returns the exported artifact's provenance."""
    from model.evaluate import artifact_sts_spearman  # evaluation imports export's helpers

    started = time.monotonic()
    pairs, dev, test, files = read_scored_splits(data)

    checkpoint = Path(data.checkpoint) if data.checkpoint else default_checkpoint_dir()
    base = {} if data.checkpoint else {"source": DEFAULT_SOURCE}
    weights = checkpoint / "model.safetensors"
    base.update(checkpoint=str(checkpoint.resolve()), weights_sha256=sha256_of(weights) if weights.is_file() else None)
    tokenizer_json = checkpoint / "tokenizer.json"

    device = prepare(config, job)
    model, head = cross_base(checkpoint)
    base.update(head)
    if model.num_labels != 1:
        raise ModelError(f"{checkpoint}: has {model.num_labels} labels; scored pairs train one")
    model = model.to(device)
    export_max_len = model.info.max_len or checkpoint_max_len(checkpoint, model.config.max_tokens)
    train_max_len = min(config.max_len, export_max_len)
    eval_tokenizer = load_tokenizer(tokenizer_json, export_max_len)
    task = CrossPairTask(
        model,
        load_tokenizer(tokenizer_json, train_max_len),
        eval_tokenizer,
        pairs,
        data.score_range,
        dev,
        device,
        both_orders=data.both_orders,
    )
    hyperparameters = {
        **config.hyperparameters(),
        "loss": "bce-with-logits",
        "score_range": list(data.score_range),
        "both_orders": data.both_orders,
    }
    fingerprint = {
        "job": "finetune-cross",
        "base": {k: base[k] for k in ("checkpoint", "weights_sha256")},
        "data": {role: f.sha256 for role, f in files.items() if role != "test"},
        "hyperparameters": hyperparameters,
    }
    trainer = Trainer(task, config, job, fingerprint, tokenizer_json, export_max_len)
    log.info(
        "training a cross-encoder from %s on %d pairs (%d with both orders), %d steps on %s",
        checkpoint,
        len(pairs),
        len(task),
        trainer.total_steps,
        device,
    )
    progress = trainer.fit()

    best = load_cross_encoder(trainer.best_dir).to(device)
    scores: dict = {
        "best_epoch": progress.best_epoch,
        "dev_spearman_by_epoch": [round(h["dev"], 3) for h in progress.history],
    }
    if progress.best is not None:
        scores["dev_spearman"] = round(progress.best, 3)
    if test is not None:  # reported for the kept epoch only; nothing is chosen on it
        scores["test_spearman"] = round(cross_sts_spearman(best, eval_tokenizer, test, device), 3)
    provenance = run_provenance(
        "finetune-cross", trainer, files, hyperparameters, scores, started, device, base_model=base
    )
    log.info("selected epoch %s: %s", progress.best_epoch, scores)
    options = ExportOptions(
        name=job.model_name, version=job.version, max_len=export_max_len, int8=job.int8, provenance=provenance
    )
    manifest = export_cross_encoder(best.cpu().eval(), trainer.best_dir / "tokenizer.json", job.out, options)
    gate = manifest.quality.get("int8_gate")
    log.info("wrote %s: graphs %s%s", job.out, ", ".join(manifest.graphs), f"; int8 gate {gate}" if gate else "")
    if test is not None:
        served = artifact_sts_spearman(Artifact.load(job.out), test)
        provenance["scores"] = {**scores, "test_spearman_onnxruntime": round(served, 3)}
        log.info("sts-test Spearman x100 through onnxruntime (the fast graph): %.3f", served)
    # the manifest is written before the artifact can be scored: the run directory keeps both figures
    (trainer.run_dir / "scores.json").write_text(json.dumps(provenance["scores"], indent=2) + "\n")
    return provenance


def pretrain(config: TrainConfig, data: PretrainConfig, job: JobConfig) -> dict:
    """Train a WordPiece tokenizer and an encoder from scratch with MLM; returns the provenance."""
    started = time.monotonic()
    texts = read_corpus(data.corpus)
    files = {"corpus": describe(data.corpus, len(texts))}
    dev_texts = None
    if data.dev_file:
        dev_texts = read_corpus(data.dev_file)
        files["dev"] = describe(data.dev_file, len(dev_texts))

    device = prepare(config, job)
    tokenizer_json = job.run_path / "tokenizer.json"
    if job.resume and (job.run_path / "checkpoint.pt").exists() and tokenizer_json.exists():
        tokenizer = load_tokenizer(tokenizer_json, config.max_len)  # the run's own, never retrained
    else:
        tokenizer = train_wordpiece(texts, data.vocab_size, config.max_len)
        tokenizer.save(str(tokenizer_json))
    if tokenizer.token_to_id("[PAD]") != 0:
        raise ModelError("the trained tokenizer must give [PAD] id 0: the server pads with 0")
    encoder_config = EncoderConfig(
        vocab_size=tokenizer.get_vocab_size(),
        d_model=data.d_model,
        n_heads=data.n_heads,
        n_layers=data.n_layers,
        d_ff=data.d_ff,
        max_len=config.max_len,
        positions=data.positions,
        type_vocab_size=0,  # single sentences: no segment embeddings
        dropout=data.dropout,
    )
    encoder = Encoder(encoder_config).to(device)
    task = MaskedLMTask(encoder, tokenizer, texts, dev_texts, data.mask_prob, config.seed, device)
    hyperparameters = {
        **config.hyperparameters(),
        **{k: v for k, v in dataclasses.asdict(data).items() if k not in ("corpus", "dev_file")},
    }
    fingerprint = {
        "job": "pretrain",
        "data": {role: f.sha256 for role, f in files.items()},
        "hyperparameters": hyperparameters,
    }
    trainer = Trainer(task, config, job, fingerprint, tokenizer_json, config.max_len)
    n_params = sum(p.numel() for p in encoder.parameters())
    log.info(
        "pre-training a %s-parameter encoder on %d texts, %d steps on %s",
        f"{n_params:,}",
        len(texts),
        trainer.total_steps,
        device,
    )
    progress = trainer.fit()

    best, scores = best_and_scores(trainer, progress, "dev_mlm_loss", 4, device)
    tokenizer_info = {"type": "WordPiece", "vocab_size": encoder_config.vocab_size}
    provenance = run_provenance(
        "pretrain", trainer, files, hyperparameters, scores, started, device, tokenizer=tokenizer_info
    )
    export(best, trainer.best_dir / "tokenizer.json", job, config.max_len, provenance)
    return provenance


def best_and_scores(
    trainer: Trainer, progress: Progress, metric: str, digits: int, device: torch.device
) -> tuple[Encoder, dict]:
    """The best epoch's encoder, and the dev metric per epoch and at that epoch."""
    best = load_checkpoint(trainer.best_dir).to(device)
    scores: dict = {
        "best_epoch": progress.best_epoch,
        f"{metric}_by_epoch": [round(h["dev"], digits) for h in progress.history],
    }
    if progress.best is not None:
        scores[metric] = round(progress.best, digits)
    return best, scores


def run_provenance(
    job: str,
    trainer: Trainer,
    files: dict,
    hyperparameters: dict,
    scores: dict,
    started: float,
    device: torch.device,
    **extra,
) -> dict:
    """What the artifact's manifest records about the run that made it."""
    return {
        "job": job,
        **extra,
        "checkpoint": str(trainer.best_dir.resolve()),
        "data": {role: f.to_dict() for role, f in files.items()},
        "hyperparameters": hyperparameters,
        "scores": scores,
        "train_seconds": round(time.monotonic() - started, 1),
        "device": str(device),
    }


def export(encoder: Encoder, tokenizer_json: Path, job: JobConfig, max_len: int, provenance: dict) -> None:
    options = ExportOptions(
        name=job.model_name, version=job.version, max_len=max_len, int8=job.int8, provenance=provenance
    )
    manifest = export_artifact(encoder.cpu().eval(), tokenizer_json, job.out, options)
    gate = manifest.quality.get("int8_gate")
    log.info("wrote %s: graphs %s%s", job.out, ", ".join(manifest.graphs), f"; int8 gate {gate}" if gate else "")
