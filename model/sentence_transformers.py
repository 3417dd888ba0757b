"""Read a sentence-transformers model directory the way sentence-transformers does.

`modules.json` lists the pipeline: a Transformer (the encoder, at the directory's root), a
Pooling module, then optionally Dense layers and a Normalize module. Each is read from its
own folder: `1_Pooling/config.json` (one of the six pooling modes), `2_Dense/config.json`
and its weights; Normalize has no files. The Transformer's `sentence_bert_config.json` gives
max_seq_length and do_lower_case, `config_sentence_transformers.json` the prompts.

Anything this server cannot reproduce exactly is refused with a message that names it: an
unknown module, an unknown or combined pooling mode, an activation it does not know. Nothing
falls back to CLS or to mean silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifact.pooling import POOLING_MODES, Dense
from model.errors import ModelError

# transformers' class names in modules.json, legacy (`sentence_transformers.models.X`) or current
TRANSFORMER, POOLING, DENSE, NORMALIZE = "Transformer", "Pooling", "Dense", "Normalize"
KNOWN_MODULES = (TRANSFORMER, POOLING, DENSE, NORMALIZE)
MODULE_PATHS = {
    TRANSFORMER: ("sentence_transformers.models", "sentence_transformers.base.modules.transformer"),
    POOLING: ("sentence_transformers.models", "sentence_transformers.sentence_transformer.modules.pooling"),
    DENSE: ("sentence_transformers.models", "sentence_transformers.base.modules.dense"),
    NORMALIZE: ("sentence_transformers.models", "sentence_transformers.base.modules.normalize"),
}
# the legacy boolean keys of 1_Pooling/config.json, in the order sentence-transformers reads them
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Dense activation_function (a torch.nn class path) -> the numpy activation artifact/pooling applies
TORCH_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}


@dataclass(frozen=True)
class DenseLayer:
    name: str  # the module's folder, e.g. 2_Dense
    dense: Dense


@dataclass(frozen=True)
class SentenceTransformerConfig:
    modules: tuple[str, ...]  # the module classes in modules.json's order
    pooling: str
    dense: tuple[DenseLayer, ...]
    normalize: bool
    max_seq_length: int | None
    do_lower_case: bool
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None

    def summary(self) -> dict:
        """What the manifest records of the pipeline (the Dense weights go to files of their own)."""
        return {
            "modules": list(self.modules),
            "max_seq_length": self.max_seq_length,
            "do_lower_case": self.do_lower_case,
            "similarity_fn_name": self.similarity_fn_name,
        }


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return value


def module_class(type_name: object, source: Path) -> str:
    """`sentence_transformers.models.Pooling` (or its current module path) -> "Pooling"."""
    if isinstance(type_name, str):
        package, _, name = type_name.rpartition(".")
        if name in MODULE_PATHS and package in MODULE_PATHS[name]:
            return name
    known = ", ".join(KNOWN_MODULES)
    raise ModelError(f"{source}: module type {type_name!r} is not supported (known: {known})")


def pooling_mode(config: dict, path: Path) -> str:
    """The one pooling mode of 1_Pooling/config.json, read as sentence-transformers reads it."""
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode) if isinstance(mode, list) else [mode]
    else:
        unknown = sorted(k for k in config if k.startswith("pooling_mode_") and k not in LEGACY_POOLING_KEYS)
        if unknown:
            raise ModelError(f"{path}: pooling key {unknown[0]!r} is not a known pooling mode")
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)]
        if not modes:
            modes = ["mean"]  # sentence-transformers' own default when no key is true
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ModelError(f"{path}: pooling mode {mode!r} is not supported (known: {', '.join(POOLING_MODES)})")
    if len(modes) != 1:
        raise ModelError(f"{path}: several pooling modes at once ({', '.join(modes)}) are not supported")
    if config.get("include_prompt", True) is not True:
        raise ModelError(f"{path}: include_prompt false (prompt tokens left out of pooling) is not supported")
    return modes[0]


def read_dense(directory: Path) -> DenseLayer:
    config_path = directory / "config.json"
    config = read_json(config_path)
    activation_path = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation_path not in TORCH_ACTIVATIONS:
        raise ModelError(
            f"{config_path}: activation_function {activation_path!r} is not supported "
            f"(known: {', '.join(TORCH_ACTIVATIONS)})"
        )
    if config.get("use_residual"):
        raise ModelError(f"{config_path}: use_residual is not supported")
    if config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise ModelError(f"{config_path}: module_input_name {config['module_input_name']!r} is not supported")
    tensors = read_dense_tensors(directory)
    expected = {"linear.weight"} | ({"linear.bias"} if config.get("bias", True) else set())
    if set(tensors) != expected:
        raise ModelError(f"{directory}: Dense tensors {sorted(tensors)}, expected {sorted(expected)}")
    weight = tensors["linear.weight"]
    shape = (int(config["out_features"]), int(config["in_features"]))
    if weight.shape != shape:
        raise ModelError(f"{directory}: linear.weight has shape {weight.shape}, config says {shape}")
    bias = tensors.get("linear.bias")
    if bias is not None and bias.shape != (shape[0],):
        raise ModelError(f"{directory}: linear.bias has shape {bias.shape}, expected ({shape[0]},)")
    return DenseLayer(directory.name, Dense(weight, bias, TORCH_ACTIVATIONS[activation_path]))


def read_dense_tensors(directory: Path) -> dict[str, np.ndarray]:
    if (directory / "model.safetensors").is_file():
        from safetensors.numpy import load_file

        try:
            return {k: v.astype(np.float32) for k, v in load_file(str(directory / "model.safetensors")).items()}
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{directory / 'model.safetensors'}: not a readable safetensors file ({exc})") from None
    if (directory / "pytorch_model.bin").is_file():
        import torch

        try:
            state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types on a bad file
            raise ModelError(f"{directory / 'pytorch_model.bin'}: not a readable weights file ({exc})") from None
        return {k: v.float().numpy() for k, v in state.items()}
    raise ModelError(f"{directory}: no model.safetensors or pytorch_model.bin for the Dense layer")


def read_sentence_transformer(directory: Path) -> SentenceTransformerConfig | None:
    """The pipeline of a sentence-transformers directory; None when it has no modules.json."""
    directory = Path(directory)
    modules_path = directory / "modules.json"
    if not modules_path.exists():
        return None
    try:
        entries = json.loads(modules_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{modules_path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ModelError(f"{modules_path}: expected a list of module objects")
    entries = sorted(entries, key=lambda e: e.get("idx", 0))
    classes = tuple(module_class(e.get("type"), modules_path) for e in entries)
    if not classes or classes[0] != TRANSFORMER or entries[0].get("path", "") not in ("", "."):
        raise ModelError(f"{modules_path}: the first module must be a Transformer at the directory's root")
    if classes.count(POOLING) != 1 or classes[1] != POOLING:
        raise ModelError(f"{modules_path}: expected exactly one Pooling module, right after the Transformer")
    if classes.count(TRANSFORMER) != 1:
        raise ModelError(f"{modules_path}: more than one Transformer module")
    if NORMALIZE in classes and classes.index(NORMALIZE) != len(classes) - 1:
        raise ModelError(f"{modules_path}: a Normalize module must come last")
    for entry, cls in zip(entries, classes, strict=True):
        if cls in (POOLING, DENSE) and not (isinstance(entry.get("path"), str) and entry["path"]):
            raise ModelError(f"{modules_path}: the {cls} module (idx {entry.get('idx')}) names no folder in 'path'")

    pooling = pooling_mode(read_json(directory / entries[1]["path"] / "config.json"), directory / entries[1]["path"])
    dense = tuple(
        read_dense(directory / entry["path"]) for entry, cls in zip(entries, classes, strict=True) if cls == DENSE
    )
    dimension = None
    for layer in dense:  # each Dense reads what the one before wrote
        if dimension is not None and layer.dense.in_features != dimension:
            raise ModelError(f"{directory / layer.name}: in_features {layer.dense.in_features}, expected {dimension}")
        dimension = layer.dense.out_features

    bert_config_path = directory / "sentence_bert_config.json"
    bert_config = read_json(bert_config_path) if bert_config_path.exists() else {}
    max_seq_length = bert_config.get("max_seq_length")
    if max_seq_length is not None and (not isinstance(max_seq_length, int) or max_seq_length <= 0):
        raise ModelError(f"{bert_config_path}: max_seq_length {max_seq_length!r} is not a positive integer")
    do_lower_case = bert_config.get("do_lower_case", False)
    if not isinstance(do_lower_case, bool):
        raise ModelError(f"{bert_config_path}: do_lower_case {do_lower_case!r} is not true or false")

    st_config_path = directory / "config_sentence_transformers.json"
    st_config = read_json(st_config_path) if st_config_path.exists() else {}
    prompts = st_config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ModelError(f"{st_config_path}: prompts must map names to strings")
    default_prompt_name = st_config.get("default_prompt_name")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ModelError(f"{st_config_path}: default_prompt_name {default_prompt_name!r} is not among the prompts")
    return SentenceTransformerConfig(
        modules=classes,
        pooling=pooling,
        dense=dense,
        normalize=NORMALIZE in classes,
        max_seq_length=max_seq_length,
        do_lower_case=do_lower_case,
        prompts=dict(prompts),
        default_prompt_name=default_prompt_name,
        similarity_fn_name=st_config.get("similarity_fn_name"),
    )
