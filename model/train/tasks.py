"""The training tasks: what a step computes, how a dev set is scored and what is saved.

PairTask fine-tunes a bi-encoder on sentence pairs (model/train/losses.py); MaskedLMTask
pre-trains with masked-LM (model/train/heads.py). Both embed the way the server does:
mean-pooled, L2-normalised. CrossPairTask fine-tunes a cross-encoder (model/cross_encoder.py) on
scored pairs read together, `[CLS] a [SEP] b [SEP]`, as the server scores them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from artifact.pooling import pad_batch
from model.cross_encoder import (
    CROSS_ENCODER_CONFIG,
    CROSS_ENCODER_WEIGHTS,
    CrossEncoder,
    save_native_cross_encoder,
)
from model.data import ScoredPair, unique_sentences
from model.encoder import Encoder, mean_pool
from model.evaluate import spearman
from model.tokenizer import SPECIAL_TOKENS
from model.train.heads import MaskedLMHead, mask_tokens
from model.train.losses import LOSSES, cosent_loss
from model.train.trainer import Evaluation
from model.weights import NATIVE_CONFIG, NATIVE_WEIGHTS, save_native


def to_device(token_ids: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, attention_mask = pad_batch(token_ids)
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(attention_mask).to(device)


@torch.no_grad()
def embed(encoder: Encoder, token_ids: list[list[int]], device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised vectors in length-sorted batches, as the server computes them."""
    was_training = encoder.training
    encoder.eval()
    order = np.argsort([len(t) for t in token_ids], kind="stable")
    out = np.zeros((len(token_ids), encoder.config.d_model), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        input_ids, attention_mask = to_device([token_ids[i] for i in index], device)
        pooled = mean_pool(encoder(input_ids, attention_mask), attention_mask)
        out[index] = F.normalize(pooled, dim=-1).float().cpu().numpy()
    encoder.train(was_training)
    return out


def sts_spearman(encoder: Encoder, tokenizer: Tokenizer, pairs: list[ScoredPair], device: torch.device) -> float:
    """Spearman x100 of the cosines against the gold scores, the STS Benchmark's figure."""
    sentences = unique_sentences(pairs)
    index = {s: i for i, s in enumerate(sentences)}
    vectors = embed(encoder, [e.ids for e in tokenizer.encode_batch(sentences)], device)
    cosines = np.array([vectors[index[p.sentence1]] @ vectors[index[p.sentence2]] for p in pairs])
    return 100.0 * spearman(cosines, np.array([p.score for p in pairs]))


class PairTask:
    """Sentence pairs -> mean-pooled embeddings of both sides -> a similarity loss."""

    def __init__(
        self,
        encoder: Encoder,
        train_tokenizer: Tokenizer,
        eval_tokenizer: Tokenizer,
        pairs: list[ScoredPair],
        loss: str,
        score_range: tuple[float, float],
        dev: list[ScoredPair] | None,
        device: torch.device,
    ):
        self.encoder, self.eval_tokenizer, self.dev, self.device = encoder, eval_tokenizer, dev, device
        self.modules = {"encoder": encoder}
        self.loss_fn = LOSSES[loss]
        sentences = unique_sentences(pairs)
        ids = {s: e.ids for s, e in zip(sentences, train_tokenizer.encode_batch(sentences), strict=True)}
        self.left = [ids[p.sentence1] for p in pairs]
        self.right = [ids[p.sentence2] for p in pairs]
        low, high = score_range
        self.scores = torch.tensor([(p.score - low) / (high - low) for p in pairs], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.left)

    def loss(self, indices: list[int], step: int) -> tuple[torch.Tensor, int]:
        B = len(indices)
        # both sides in one forward pass: (2B, T)
        input_ids, attention_mask = to_device(
            [self.left[i] for i in indices] + [self.right[i] for i in indices], self.device
        )
        pooled = mean_pool(self.encoder(input_ids, attention_mask), attention_mask)  # (2B, C)
        loss = self.loss_fn(pooled[:B], pooled[B:], self.scores[indices].to(self.device))
        return loss, int(attention_mask.sum())

    def evaluate(self) -> Evaluation | None:
        if self.dev is None:
            return None
        return Evaluation("dev_spearman", sts_spearman(self.encoder, self.eval_tokenizer, self.dev, self.device), True)

    def save(self, directory: Path) -> list[str]:
        save_native(self.encoder, directory)
        return [NATIVE_CONFIG, NATIVE_WEIGHTS]


class DistillTask:
    """Sentence pairs -> the student's vectors of both sides -> squared distance to the teacher's
    vectors (L2-normalised, as served) plus, weighted, CoSENT on the pairs' gold scores.

    ||s - t||^2 of unit vectors is 2 - 2 cos(s, t): the student learns the teacher's directions,
    which is all that cosine similarity and the served (normalised) vectors depend on.
    """

    def __init__(
        self,
        student: Encoder,
        train_tokenizer: Tokenizer,
        eval_tokenizer: Tokenizer,
        pairs: list[ScoredPair],
        teacher_vectors: dict[str, np.ndarray],
        cosent_weight: float,
        score_range: tuple[float, float],
        dev: list[ScoredPair] | None,
        device: torch.device,
    ):
        self.encoder, self.eval_tokenizer, self.dev, self.device = student, eval_tokenizer, dev, device
        self.modules = {"encoder": student}
        self.cosent_weight = cosent_weight
        sentences = unique_sentences(pairs)
        ids = {s: e.ids for s, e in zip(sentences, train_tokenizer.encode_batch(sentences), strict=True)}
        self.left = [ids[p.sentence1] for p in pairs]
        self.right = [ids[p.sentence2] for p in pairs]
        targets = np.stack([teacher_vectors[s] for p in pairs for s in (p.sentence1, p.sentence2)])
        self.targets = torch.from_numpy(targets.astype(np.float32)).view(len(pairs), 2, -1)  # (N, 2, C)
        low, high = score_range
        self.scores = torch.tensor([(p.score - low) / (high - low) for p in pairs], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.left)

    def loss(self, indices: list[int], step: int) -> tuple[torch.Tensor, int]:
        B = len(indices)
        input_ids, attention_mask = to_device(
            [self.left[i] for i in indices] + [self.right[i] for i in indices], self.device
        )
        pooled = mean_pool(self.encoder(input_ids, attention_mask), attention_mask)  # (2B, C)
        targets = self.targets[indices].to(self.device)  # (B, 2, C)
        targets = torch.cat([targets[:, 0], targets[:, 1]])  # (2B, C), in pooled's order
        loss = (F.normalize(pooled, dim=-1) - targets).pow(2).sum(-1).mean()
        if self.cosent_weight:
            loss = loss + self.cosent_weight * cosent_loss(pooled[:B], pooled[B:], self.scores[indices].to(self.device))
        return loss, int(attention_mask.sum())

    def evaluate(self) -> Evaluation | None:
        if self.dev is None:
            return None
        return Evaluation("dev_spearman", sts_spearman(self.encoder, self.eval_tokenizer, self.dev, self.device), True)

    def save(self, directory: Path) -> list[str]:
        save_native(self.encoder, directory)  # the student: an encoder, as the teacher's
        return [NATIVE_CONFIG, NATIVE_WEIGHTS]


class MaskedLMTask:
    """Masked-language modelling: predict corrupted tokens from their context."""

    def __init__(
        self,
        encoder: Encoder,
        tokenizer: Tokenizer,
        texts: list[str],
        dev_texts: list[str] | None,
        mask_prob: float,
        seed: int,
        device: torch.device,
    ):
        self.encoder, self.device, self.mask_prob, self.seed = encoder, device, mask_prob, seed
        self.head = MaskedLMHead(encoder.config).to(device)
        self.modules = {"encoder": encoder, "head": self.head}
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.special_ids = torch.tensor([tokenizer.token_to_id(t) for t in SPECIAL_TOKENS])
        self.texts = [e.ids for e in tokenizer.encode_batch(texts)]
        self.dev = [e.ids for e in tokenizer.encode_batch(dev_texts)] if dev_texts else None

    def __len__(self) -> int:
        return len(self.texts)

    def mlm_loss(self, token_ids: list[list[int]], mask_seed: int) -> tuple[torch.Tensor, int]:
        input_ids, attention_mask = pad_batch(token_ids)
        input_ids, attention_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        vocab_size = self.encoder.config.vocab_size
        corrupted, labels = mask_tokens(input_ids, candidates, self.mask_id, vocab_size, self.mask_prob, mask_seed)
        corrupted, attention_mask, labels = (t.to(self.device) for t in (corrupted, attention_mask, labels))
        hidden = self.encoder(corrupted, attention_mask)  # (B, T, C)
        predicted = labels != -100
        logits = self.head(hidden[predicted], self.encoder.token_embedding.weight)  # (N, vocab), masked only
        return F.cross_entropy(logits, labels[predicted]), int(attention_mask.sum())

    def loss(self, indices: list[int], step: int) -> tuple[torch.Tensor, int]:
        return self.mlm_loss([self.texts[i] for i in indices], mask_seed=self.seed * 1_000_003 + step)

    @torch.no_grad()
    def evaluate(self) -> Evaluation | None:
        """Mean MLM loss on the dev texts, with the same masks at every evaluation."""
        if self.dev is None:
            return None
        for module in self.modules.values():
            module.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.dev), 64):
            batch = self.dev[start : start + 64]
            loss, _ = self.mlm_loss(batch, mask_seed=self.seed + start)
            total, count = total + float(loss) * len(batch), count + len(batch)
        for module in self.modules.values():
            module.train()
        return Evaluation("dev_mlm_loss", total / count, False)

    def save(self, directory: Path) -> list[str]:
        save_native(self.encoder, directory)  # the MLM head is for training only
        return [NATIVE_CONFIG, NATIVE_WEIGHTS]


def pair_batch(encodings: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, token_type_ids) of tokenized pairs, segment 0 on padding."""
    input_ids, attention_mask = pad_batch([e.ids for e in encodings])
    token_type_ids = np.zeros_like(input_ids)
    for row, e in enumerate(encodings):
        token_type_ids[row, : len(e.type_ids)] = e.type_ids
    return tuple(torch.from_numpy(a).to(device) for a in (input_ids, attention_mask, token_type_ids))


@torch.no_grad()
def pair_logits(model: CrossEncoder, encodings: list, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """(N, num_labels) logits in length-sorted batches, as the server scores pairs."""
    was_training = model.training
    model.eval()
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    out = np.zeros((len(encodings), model.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        out[index] = model(*pair_batch([encodings[i] for i in index], device)).float().cpu().numpy()
    model.train(was_training)
    return out


def cross_sts_spearman(model: CrossEncoder, tokenizer: Tokenizer, pairs: list[ScoredPair], device) -> float:
    """Spearman x100 of the pair's logit against the gold scores (any monotone activation ranks alike)."""
    encodings = tokenizer.encode_batch([(p.sentence1, p.sentence2) for p in pairs])
    logits = pair_logits(model, encodings, device)[:, 0]
    return 100.0 * spearman(logits, np.array([p.score for p in pairs]))


class CrossPairTask:
    """Scored pairs read together -> one logit -> BCE-with-logits against the score scaled to [0, 1].

    With both_orders each pair is also trained as (b, a): a cross-encoder is not symmetric by
    construction, and the served query/document order is the caller's.
    """

    def __init__(
        self,
        model: CrossEncoder,
        train_tokenizer: Tokenizer,
        eval_tokenizer: Tokenizer,
        pairs: list[ScoredPair],
        score_range: tuple[float, float],
        dev: list[ScoredPair] | None,
        device: torch.device,
        both_orders: bool = False,
    ):
        self.model, self.encoder = model, model.encoder
        self.eval_tokenizer, self.dev, self.device = eval_tokenizer, dev, device
        self.modules = {"model": model}
        low, high = score_range
        texts = [(p.sentence1, p.sentence2) for p in pairs]
        targets = [(p.score - low) / (high - low) for p in pairs]
        if both_orders:
            texts += [(b, a) for a, b in texts]
            targets += targets
        self.encodings = train_tokenizer.encode_batch(texts)
        self.lengths = [len(e.ids) for e in self.encodings]  # the trainer groups batches by length
        self.targets = torch.tensor(targets, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.encodings)

    def loss(self, indices: list[int], step: int) -> tuple[torch.Tensor, int]:
        input_ids, attention_mask, token_type_ids = pair_batch([self.encodings[i] for i in indices], self.device)
        logits = self.model(input_ids, attention_mask, token_type_ids)[:, 0]  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, self.targets[indices].to(self.device))
        return loss, int(attention_mask.sum())

    def evaluate(self) -> Evaluation | None:
        if self.dev is None:
            return None
        score = cross_sts_spearman(self.model, self.eval_tokenizer, self.dev, self.device)
        return Evaluation("dev_spearman", score, True)

    def save(self, directory: Path) -> list[str]:
        save_native_cross_encoder(self.model, directory)
        return [NATIVE_CONFIG, CROSS_ENCODER_CONFIG, CROSS_ENCODER_WEIGHTS]
