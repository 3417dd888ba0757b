"""Small cross-encoders saved by sentence-transformers' own `CrossEncoder.save`: random weights,
a word-level vocabulary whose tokenizer builds pairs as BERT's does (`[CLS] a [SEP] b [SEP]`,
type ids 0 then 1). The model tests export them; the service tests serve them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.support.sentence_transformers import WORDS

BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MPNET_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # pad id 1, as MPNet's


def write_word_tokenizer(directory: Path, family: str = "bert", model_max_length: int = 64) -> int:
    """A tokenizer.json over WORDS that builds pairs as the family's does; returns the vocabulary size.

    BERT: `[CLS] a [SEP] b [SEP]`, type ids 0 then 1. MPNet: `<s> a </s></s> b </s>`, no type ids."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    special = MPNET_SPECIAL if family == "mpnet" else BERT_SPECIAL
    vocab = {token: i for i, token in enumerate([*special, *WORDS])}
    cls, pad, sep, unk, mask = special
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if family == "mpnet":
        tokenizer.post_processor = processors.RobertaProcessing((sep, vocab[sep]), (cls, vocab[cls]))
        tokenizer_class = "MPNetTokenizer"
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
        tokenizer_class = "BertTokenizer"  # whose model inputs include token_type_ids
    tokenizer.add_special_tokens(special)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"pad_token": pad, "cls_token": cls, "sep_token": sep, "unk_token": unk, "mask_token": mask}
    config.update(tokenizer_class=tokenizer_class, do_lower_case=True, model_max_length=model_max_length)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def write_tiny_bert_classifier(
    directory: Path, num_labels: int = 1, family: str = "bert", seed: int = 0, std: float = 0.3, dropout: float = 0.1
) -> Path:
    """A transformers *ForSequenceClassification directory (the older layout: no modules.json).

    std 0.3 makes every layer and the head matter to the answer; training starts better from
    transformers' own 0.02."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = write_word_tokenizer(directory, family)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=32,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    if family == "mpnet":
        from transformers import MPNetConfig, MPNetForSequenceClassification

        model = MPNetForSequenceClassification(MPNetConfig(**common, max_position_embeddings=66, layer_norm_eps=1e-5))
    else:
        from transformers import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(BertConfig(**common, max_position_embeddings=64, type_vocab_size=2))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" not in name:
                parameter.normal_(0.0, std)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def write_tiny_cross_encoder(directory: Path, num_labels: int = 1, max_length: int | None = 12, **kwargs) -> Path:
    """What sentence-transformers' CrossEncoder.save writes, from a tiny random classifier."""
    from sentence_transformers import CrossEncoder

    source = write_tiny_bert_classifier(directory.parent / (directory.name + "-hf"), num_labels, **kwargs)
    CrossEncoder(str(source), num_labels=num_labels, max_length=max_length, device="cpu").save(str(directory))
    return directory
