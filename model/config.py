"""EncoderConfig: the one description every part of the encoder is built from."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.errors import ModelError

HF_MODEL_TYPES = ("bert", "mpnet")  # the Hugging Face families config.json may name
MPNET_BUCKETS = 32


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    vocab_size: int = 30522
    d_model: int = 384
    n_heads: int = 12
    n_layers: int = 6
    d_ff: int = 1536
    max_len: int = 512  # positions the embedding table covers
    positions: Literal["learned", "sinusoidal"] = "learned"
    norm: Literal["post", "pre"] = "post"  # post-LN as in BERT, pre-LN as in GPT-2
    type_vocab_size: int = 2  # BERT segment embeddings; 0 disables them
    embedding_norm: bool = True  # BERT normalises the summed embeddings
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    causal: bool = False
    pad_token_id: int = 0
    # Position ids as RoBERTa and MPNet number them: real tokens at pad_token_id + 1, + 2, ...
    # and padding at pad_token_id (learned positions only). Otherwise 0, 1, 2, ...
    positions_after_pad: bool = False
    # MPNet's relative position bias: a (buckets, h) table shared by every layer, indexed by the
    # bucketed key - query distance and added to the scaled scores. 0 disables it.
    relative_attention_buckets: int = 0
    relative_attention_max_distance: int = 128

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads > 0 and self.d_model % self.n_heads:
            problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.positions not in ("learned", "sinusoidal"):
            problems.append(f"positions must be 'learned' or 'sinusoidal', got {self.positions!r}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            problems.append(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.norm not in ("post", "pre"):
            problems.append(f"norm must be 'post' or 'pre', got {self.norm!r}")
        if self.type_vocab_size < 0:
            problems.append(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if self.positions_after_pad and self.positions != "learned":
            problems.append("positions_after_pad needs learned positions")
        if self.positions_after_pad and not 0 <= self.pad_token_id < self.max_len - 1:
            problems.append(f"pad_token_id {self.pad_token_id} leaves no positions after it in max_len {self.max_len}")
        if self.relative_attention_buckets < 0 or self.relative_attention_buckets % 2:
            problems.append(
                f"relative_attention_buckets must be an even number >= 0 (half per direction), "
                f"got {self.relative_attention_buckets}"
            )
        exact = self.relative_attention_buckets // 4  # exact distances per direction
        if self.relative_attention_buckets and self.relative_attention_max_distance <= exact:
            problems.append(
                f"relative_attention_max_distance ({self.relative_attention_max_distance}) must exceed the "
                f"exact range ({exact})"
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ModelError("invalid encoder config: " + "; ".join(problems))

    @property
    def d_k(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table covers."""
        return self.max_len - self.pad_token_id - 1 if self.positions_after_pad else self.max_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"{source}: unknown encoder config keys {unknown}")
        return cls(**values)

    @classmethod
    def from_bert_config(cls, path: Path) -> EncoderConfig:
        """Translate a Hugging Face BERT config.json; refuse what this encoder can't express."""
        try:
            hf = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ModelError(f"{path}: file not found") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a readable JSON config ({exc})") from None
        return cls.from_bert_config_dict(hf, source=str(path))

    @classmethod
    def from_bert_config_dict(cls, hf: object, source: str = "config.json") -> EncoderConfig:
        """A BERT- or MPNet-family config.json (model_type "bert" or "mpnet")."""
        path = source
        if not isinstance(hf, dict):
            raise ModelError(f"{path}: expected a JSON object")
        model_type = hf.get("model_type", "bert")
        unsupported = []
        if model_type not in HF_MODEL_TYPES:
            unsupported.append(f"model_type {model_type!r} (only {' or '.join(map(repr, HF_MODEL_TYPES))})")
        if hf.get("hidden_act", "gelu") != "gelu":
            unsupported.append(f"hidden_act {hf.get('hidden_act')!r} (only exact 'gelu')")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            unsupported.append(f"position_embedding_type {hf.get('position_embedding_type')!r}")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            unsupported.append("decoder / cross-attention layers")
        if model_type == "mpnet":
            buckets = hf.get("relative_attention_num_buckets", MPNET_BUCKETS)
            if buckets != MPNET_BUCKETS:  # transformers buckets into 32 whatever the table's size
                unsupported.append(f"relative_attention_num_buckets {buckets!r} (MPNet computes {MPNET_BUCKETS})")
            if hf.get("pad_token_id", 1) != 1:  # MPNetEmbeddings hard-codes padding_idx 1
                unsupported.append(f"pad_token_id {hf.get('pad_token_id')!r} (MPNet numbers positions after 1)")
        if unsupported:
            raise ModelError(f"{path}: config the encoder can't express: " + ", ".join(unsupported))
        family = (
            {"type_vocab_size": 0, "positions_after_pad": True, "relative_attention_buckets": MPNET_BUCKETS}
            if model_type == "mpnet"
            else {"type_vocab_size": int(hf.get("type_vocab_size", 2))}
        )
        try:
            return cls(
                vocab_size=int(hf["vocab_size"]),
                d_model=int(hf["hidden_size"]),
                n_heads=int(hf["num_attention_heads"]),
                n_layers=int(hf["num_hidden_layers"]),
                d_ff=int(hf["intermediate_size"]),
                max_len=int(hf["max_position_embeddings"]),
                layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                dropout=float(hf.get("hidden_dropout_prob", 0.1)),
                pad_token_id=int(hf.get("pad_token_id", 1 if model_type == "mpnet" else 0)),
                **family,
            )
        except KeyError as exc:
            raise ModelError(f"{path}: missing key {exc.args[0]!r}") from None
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None
