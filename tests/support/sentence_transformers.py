"""Small sentence-transformers directories written from scratch: the model tests read and export
them, and the service tests serve one with a Dense layer, whose vectors are narrower than d_model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sentence_transformers.base.modules.dense import Dense as STDense

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def write_st(directory: Path, pooling: dict | None = None, modules: list | None = None, **files) -> Path:
    """A sentence-transformers layout around the encoder (whose own files don't matter here)."""
    (directory / "modules.json").write_text(json.dumps(MODULES[:2] + MODULES[3:] if modules is None else modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    default = {"word_embedding_dimension": 6, "pooling_mode_mean_tokens": True}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling or default))
    for name, value in files.items():
        (directory / name).write_text(json.dumps(value))
    return directory


WORDS = [
    "a",
    "man",
    "woman",
    "child",
    "is",
    "plays",
    "playing",
    "guitar",
    "piano",
    "the",
    "on",
    "in",
    "park",
    "dog",
    "runs",
    "quickly",
    "slowly",
]


def write_tiny_mpnet_st(directory: Path, pooling: str) -> Path:
    """A whole sentence-transformers MPNet directory: random weights, a word-level vocabulary whose
    pad id is 1 as MPNet's, weightedmean (or any) pooling, a Dense layer and Normalize."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import MPNetConfig, MPNetModel

    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "[UNK]", *WORDS])}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "pad_token": "<pad>",
                "cls_token": "<s>",
                "sep_token": "</s>",
                "unk_token": "[UNK]",
                "model_max_length": 64,
            }
        )
    )
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=32,
        max_position_embeddings=66,
        layer_norm_eps=1e-5,
    )
    hf = MPNetModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "LayerNorm" not in name:
                parameter.normal_(0.0, 0.3)
    hf.save_pretrained(directory, safe_serialization=True)
    (directory / "2_Dense").mkdir()
    STDense(16, 8, activation_function=torch.nn.Tanh()).save(str(directory / "2_Dense"))
    return write_st(
        directory,
        pooling={"word_embedding_dimension": 16, "pooling_mode": pooling},
        modules=MODULES,
        **{
            "sentence_bert_config.json": {"max_seq_length": 12, "do_lower_case": False},
            "config_sentence_transformers.json": {"prompts": {"query": "query: "}, "default_prompt_name": None},
        },
    )
