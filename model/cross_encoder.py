"""A cross-encoder: the one Encoder over a pair, then a sequence-classification head.

transformers' `BertForSequenceClassification` reads `[CLS] a [SEP] b [SEP]` with segment ids 0
then 1, takes the hidden state of the first token through its pooler (dense + tanh) and a
linear classifier with `num_labels` outputs. `MPNetForSequenceClassification` computes the same
arithmetic under other names (`classifier.dense`, tanh, `classifier.out_proj` on `<s>`), and has
no segment embeddings. Both are loaded here key by key into `CrossEncoder`; anything else
(RoBERTa, DistilBERT, ...) is refused by name.

Checkpoints read:
- what sentence-transformers' `CrossEncoder.save` writes (6.x): config.json naming a
  `*ForSequenceClassification` with `id2label`, modules.json with a single Transformer module,
  config_sentence_transformers.json with `"model_type": "CrossEncoder"` and `activation_fn`,
  sentence_bert_config.json, model.safetensors and the tokenizer;
- the older layout without modules.json: a transformers directory of the same classes (older
  sentence-transformers kept its activation in config.json as
  `sbert_ce_default_activation_function`);
- our own (`cross_encoder.json` + `encoder.json` + one safetensors file), written by training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from model.config import EncoderConfig
from model.encoder import Encoder
from model.errors import ModelError
from model.weights import NATIVE_CONFIG, bert_key_map, mpnet_key_map, read_safetensors

CROSS_ENCODER_CONFIG = "cross_encoder.json"  # our own format: labels, activation, length
CROSS_ENCODER_WEIGHTS = "cross_encoder.safetensors"
ARCHITECTURES = {"BertForSequenceClassification": "bert", "MPNetForSequenceClassification": "mpnet"}
# what CrossEncoder.predict applies to the logits, by the torch class sentence-transformers saved
SCORE_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Softmax": "softmax",
}
# transformers' own tensors that carry nothing a sequence classifier computes
UNUSED_PREFIXES = ("embeddings.position_ids",)


class ClassificationHead(nn.Module):
    """pooler: tanh(W_p h_[CLS] + b_p); classifier: W_c pooled + b_c -> (B, num_labels) logits."""

    def __init__(self, config: EncoderConfig, num_labels: int):
        super().__init__()
        self.pooler = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, num_labels)
        for linear in (self.pooler, self.classifier):  # transformers' initialisation
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # (B, C): the first token, [CLS] or <s>
        return self.classifier(self.dropout(pooled))  # (B, num_labels)


@dataclass(frozen=True)
class CrossEncoderInfo:
    """What the artifact records beside the weights."""

    labels: tuple[str, ...]  # id2label in id order
    score_activation: str  # sigmoid | identity | softmax, what CrossEncoder.predict applies
    max_len: int | None = None  # the pair's longest length in word pieces, when the checkpoint says
    do_lower_case: bool = False
    sentence_transformers: dict = field(default_factory=dict)  # what was read, as the manifest records it

    def to_dict(self) -> dict:
        return {
            "labels": list(self.labels),
            "score_activation": self.score_activation,
            "max_len": self.max_len,
            "do_lower_case": self.do_lower_case,
            "sentence_transformers": self.sentence_transformers,
        }


class CrossEncoder(nn.Module):
    """Encoder + ClassificationHead: raw logits, no activation (the artifact says which to apply)."""

    def __init__(self, config: EncoderConfig, info: CrossEncoderInfo):
        super().__init__()
        self.config, self.info = config, info
        self.encoder = Encoder(config)
        self.head = ClassificationHead(config, len(info.labels))

    @property
    def num_labels(self) -> int:
        return len(self.info.labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids, mask and segment ids -> logits (B, num_labels) [, attention (B, L, h, T, T)]."""
        out = self.encoder(input_ids, attention_mask, return_attention=return_attention, token_type_ids=token_type_ids)
        if return_attention:
            hidden, probs = out
            return self.head(hidden), probs
        return self.head(out)


def default_activation(num_labels: int) -> str:
    """CrossEncoder.predict's default when nothing was saved: Sigmoid for one label, else identity."""
    return "sigmoid" if num_labels == 1 else "identity"


def score_activation(path: object, source: Path) -> str:
    if path not in SCORE_ACTIVATIONS:
        raise ModelError(f"{source}: activation_fn {path!r} is not supported (known: {', '.join(SCORE_ACTIVATIONS)})")
    return SCORE_ACTIVATIONS[path]


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return value


def is_cross_encoder_dir(directory: Path) -> bool:
    """A cross-encoder checkpoint, told apart from an embedder by what it says of itself:
    our cross_encoder.json, sentence-transformers' model_type, or a *ForSequenceClassification."""
    directory = Path(directory)
    if (directory / CROSS_ENCODER_CONFIG).exists():
        return True
    st_config = directory / "config_sentence_transformers.json"
    if st_config.exists() and read_json(st_config).get("model_type") == "CrossEncoder":
        return True
    if (directory / "config.json").exists():
        architectures = read_json(directory / "config.json").get("architectures") or []
        return any(str(a).endswith("ForSequenceClassification") for a in architectures)
    return False


def hf_labels(hf: dict, source: Path) -> tuple[str, ...]:
    id2label = hf.get("id2label")
    num_labels = hf.get("num_labels")
    if id2label is None:
        if num_labels is None:
            raise ModelError(f"{source}: neither id2label nor num_labels says how many labels the classifier has")
        return tuple(f"LABEL_{i}" for i in range(int(num_labels)))
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError(f"{source}: id2label must be a non-empty object of id -> label")
    try:
        ids = sorted(int(k) for k in id2label)
    except ValueError:
        raise ModelError(f"{source}: id2label keys {sorted(id2label)} are not integer ids") from None
    if ids != list(range(len(ids))):
        raise ModelError(f"{source}: id2label ids {ids} are not 0..{len(ids) - 1}")
    if num_labels is not None and int(num_labels) != len(ids):
        raise ModelError(f"{source}: num_labels {num_labels} but id2label has {len(ids)} labels")
    return tuple(str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids)


def read_st_cross_encoder(directory: Path, num_labels: int) -> tuple[str | None, int | None, bool, dict]:
    """(activation, max_seq_length, do_lower_case, summary) from the sentence-transformers files,
    activation None where none was saved."""
    modules_path = directory / "modules.json"
    st_path = directory / "config_sentence_transformers.json"
    bert_path = directory / "sentence_bert_config.json"
    summary: dict = {}
    activation = None
    if modules_path.exists():
        try:
            entries = json.loads(modules_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{modules_path}: not valid JSON ({exc})") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ModelError(f"{modules_path}: expected a list of module objects")
        types = [str(e.get("type", "")) for e in entries]
        if (
            len(entries) != 1
            or types[0].rpartition(".")[2] != "Transformer"
            or entries[0].get("path", "")
            not in (
                "",
                ".",
            )
        ):
            raise ModelError(
                f"{modules_path}: a cross-encoder must be a single Transformer module at the directory's root, "
                f"found {types}"
            )
        summary["modules"] = ["Transformer"]
    if st_path.exists():
        st = read_json(st_path)
        model_type = st.get("model_type")
        if modules_path.exists() and model_type != "CrossEncoder":
            raise ModelError(f"{st_path}: model_type {model_type!r}, a cross-encoder says 'CrossEncoder'")
        summary["model_type"] = model_type
        if st.get("activation_fn") is not None:
            activation = score_activation(st["activation_fn"], st_path)
            summary["activation_fn"] = st["activation_fn"]
        if st.get("prompts"):
            raise ModelError(f"{st_path}: prompts on a cross-encoder are not supported")
        version = (st.get("__version__") or {}).get("sentence_transformers")
        if version:
            summary["version"] = version
    max_seq_length, do_lower_case = None, False
    if bert_path.exists():
        bert = read_json(bert_path)
        max_seq_length = bert.get("max_seq_length")
        if max_seq_length is not None and (not isinstance(max_seq_length, int) or max_seq_length <= 0):
            raise ModelError(f"{bert_path}: max_seq_length {max_seq_length!r} is not a positive integer")
        do_lower_case = bert.get("do_lower_case", False)
        if not isinstance(do_lower_case, bool):
            raise ModelError(f"{bert_path}: do_lower_case {do_lower_case!r} is not true or false")
        task = bert.get("transformer_task")
        if task not in (None, "sequence-classification"):
            raise ModelError(f"{bert_path}: transformer_task {task!r}, a cross-encoder is 'sequence-classification'")
        summary.update(max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    return activation, max_seq_length, do_lower_case, summary


def tokenizer_max_len(directory: Path) -> int | None:
    """tokenizer_config.json's model_max_length, which transformers truncates at when nothing else says."""
    path = directory / "tokenizer_config.json"
    if not path.exists():
        return None
    value = read_json(path).get("model_max_length")
    return int(value) if isinstance(value, int) and 0 < value < 1_000_000 else None


def head_key_map(family: str) -> dict[str, str]:
    """Our head's parameter -> the transformers tensor."""
    if family == "mpnet":
        pooler, classifier = "classifier.dense.", "classifier.out_proj."
    else:
        pooler, classifier = "bert.pooler.dense.", "classifier."
    return {f"head.pooler.{k}": pooler + k for k in ("weight", "bias")} | {
        f"head.classifier.{k}": classifier + k for k in ("weight", "bias")
    }


def load_hf_cross_encoder(directory: Path) -> CrossEncoder:
    """A transformers *ForSequenceClassification directory (with or without sentence-transformers' files)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    hf = read_json(config_path)
    architectures = hf.get("architectures") or []
    known = [a for a in architectures if a in ARCHITECTURES]
    if len(architectures) != 1 or not known:
        raise ModelError(
            f"{config_path}: architectures {architectures} cannot be reproduced "
            f"(a cross-encoder must be one of {', '.join(ARCHITECTURES)})"
        )
    family = ARCHITECTURES[known[0]]
    if hf.get("model_type", "bert") != family:
        raise ModelError(f"{config_path}: model_type {hf.get('model_type')!r} does not match {known[0]}")
    if hf.get("problem_type") not in (None, "regression", "single_label_classification", "multi_label_classification"):
        raise ModelError(f"{config_path}: problem_type {hf.get('problem_type')!r} is not known")
    config = EncoderConfig.from_bert_config_dict(hf, source=str(config_path))
    labels = hf_labels(hf, config_path)
    activation, max_seq_length, do_lower_case, summary = read_st_cross_encoder(directory, len(labels))
    if activation is None and hf.get("sbert_ce_default_activation_function") is not None:
        activation = score_activation(hf["sbert_ce_default_activation_function"], config_path)  # older layout
        summary["activation_fn"] = hf["sbert_ce_default_activation_function"]
    if activation is None:
        activation = default_activation(len(labels))
    summary.setdefault("activation_fn", None)
    max_len = max_seq_length or tokenizer_max_len(directory)
    max_len = min(max_len, config.max_tokens) if max_len else config.max_tokens
    info = CrossEncoderInfo(labels, activation, max_len, do_lower_case, summary)

    weights_path = directory / "model.safetensors"
    tensors = read_safetensors(weights_path)
    prefix = "mpnet." if family == "mpnet" else "bert."
    encoder_map = mpnet_key_map(config) if family == "mpnet" else bert_key_map(config)
    mapping = {f"encoder.{ours}": [prefix + s for s in sources] for ours, sources in encoder_map.items()}
    mapping.update({ours: [theirs] for ours, theirs in head_key_map(family).items()})
    model = CrossEncoder(config, info)
    load_strictly(model, tensors, mapping, weights_path, unused=tuple(prefix + p for p in UNUSED_PREFIXES))
    return model.eval()


def load_strictly(
    model: nn.Module, tensors: dict[str, torch.Tensor], mapping: dict[str, list[str]], source: Path, unused: tuple
) -> None:
    """Every parameter from the checkpoint, every checkpoint tensor used, every shape checked."""
    expected = model.state_dict()
    state, used = {}, set()
    for ours, sources in mapping.items():
        missing = [s for s in sources if s not in tensors]
        if missing:
            raise ModelError(f"{source}: missing tensor {missing[0]!r} (needed for {ours})")
        value = torch.cat([tensors[s] for s in sources], dim=0) if len(sources) > 1 else tensors[sources[0]]
        if tuple(value.shape) != tuple(expected[ours].shape):
            shapes = ", ".join(f"{s} {tuple(tensors[s].shape)}" for s in sources)
            raise ModelError(f"{source}: tensor {shapes} does not fit {ours} {tuple(expected[ours].shape)}")
        state[ours] = value.to(expected[ours].dtype)
        used.update(sources)
    unexpected = sorted(k for k in tensors if k not in used and not k.startswith(unused))
    if unexpected:
        raise ModelError(f"{source}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)")
    not_loaded = sorted(set(expected) - set(state))
    if not_loaded:
        raise ModelError(f"{source}: nothing in the checkpoint for {not_loaded[0]!r}")
    model.load_state_dict(state, strict=True)


def save_native_cross_encoder(model: CrossEncoder, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / CROSS_ENCODER_WEIGHTS))
    (directory / NATIVE_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    (directory / CROSS_ENCODER_CONFIG).write_text(json.dumps(model.info.to_dict(), indent=2) + "\n")


def load_native_cross_encoder(directory: Path) -> CrossEncoder:
    directory = Path(directory)
    config = EncoderConfig.from_dict(read_json(directory / NATIVE_CONFIG), source=str(directory / NATIVE_CONFIG))
    raw = read_json(directory / CROSS_ENCODER_CONFIG)
    try:
        info = CrossEncoderInfo(
            labels=tuple(str(label) for label in raw["labels"]),
            score_activation=str(raw["score_activation"]),
            max_len=None if raw.get("max_len") is None else int(raw["max_len"]),
            do_lower_case=bool(raw.get("do_lower_case", False)),
            sentence_transformers=dict(raw.get("sentence_transformers") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{directory / CROSS_ENCODER_CONFIG}: malformed ({exc})") from None
    if info.score_activation not in SCORE_ACTIVATIONS.values() or not info.labels:
        raise ModelError(f"{directory / CROSS_ENCODER_CONFIG}: needs labels and a known score_activation")
    model = CrossEncoder(config, info)
    weights_path = directory / CROSS_ENCODER_WEIGHTS
    tensors = read_safetensors(weights_path)
    load_strictly(model, tensors, {k: [k] for k in model.state_dict()}, weights_path, unused=())
    return model.eval()


def load_cross_encoder(directory: Path) -> CrossEncoder:
    """Our own format or a transformers / sentence-transformers one, told apart by the files present."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: checkpoint directory not found")
    if (directory / CROSS_ENCODER_CONFIG).exists():
        return load_native_cross_encoder(directory)
    if (directory / "config.json").exists():
        return load_hf_cross_encoder(directory)
    raise ModelError(f"{directory}: neither {CROSS_ENCODER_CONFIG} nor a transformers config.json found")


def from_encoder(encoder: Encoder, pooler: dict[str, torch.Tensor] | None, num_labels: int = 1) -> CrossEncoder:
    """A fresh cross-encoder on a trained encoder: its pooler if the checkpoint has one, a new classifier."""
    labels = tuple(f"LABEL_{i}" for i in range(num_labels))
    model = CrossEncoder(encoder.config, CrossEncoderInfo(labels, default_activation(num_labels)))
    model.encoder.load_state_dict(encoder.state_dict(), strict=True)
    if pooler is not None:
        model.head.pooler.load_state_dict(pooler, strict=True)
    return model


def checkpoint_pooler(directory: Path) -> dict[str, torch.Tensor] | None:
    """BERT's pretrained pooler (dense) from a checkpoint's model.safetensors, if it has one."""
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        return None
    tensors = {k.removeprefix("bert."): v for k, v in read_safetensors(path).items()}
    if "pooler.dense.weight" not in tensors:
        return None
    return {"weight": tensors["pooler.dense.weight"], "bias": tensors["pooler.dense.bias"]}
