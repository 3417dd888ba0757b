"""The artifact: the contract between model/ (which writes it) and service/ (which serves it).

A directory holding manifest.json, tokenizer.json, ONNX graphs and, for models with Dense
layers after pooling, their weights as .npy files. The manifest lists every other file with
its sha256; `Artifact.load` refuses a directory where anything is missing, altered or of an
unknown format, naming the file and the problem.

Format 2 adds what a sentence-transformers directory says beyond the encoder: any of six
pooling modes, Dense layers, whether a Normalize module is present, prompts, and Matryoshka
dimensions. Format 1 manifests (mean or cls pooling, nothing else) are still read: they mean
exactly what they meant. A format-1 reader refuses format 2, so an older server never serves
a model whose Dense layers it would skip.

Format 3 is a cross-encoder: the same encoder over a pair `[CLS] a [SEP] b [SEP]` (segment ids
0 then 1), transformers' pooler and a classifier, so its graphs output `logits` (batch,
num_labels) instead of hidden states. Its manifest says its task (`rerank` for one label,
`classify` for several), its labels in id order, and the activation sentence-transformers'
`CrossEncoder.predict` applies to the logits. Embedders are still written as format 2, so a
server that predates cross-encoders refuses one instead of serving its logits as vectors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from artifact.pooling import ACTIVATIONS, POOLING_MODES, Dense

FORMAT_VERSION = 2  # what export writes for an embedder
CROSS_ENCODER_FORMAT = 3  # what export writes for a cross-encoder
READABLE_FORMATS = (1, 2, 3)
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"

# Graph roles. "fast" outputs hidden states through fused attention kernels; "attention"
# computes attention explicitly and also outputs its probabilities.
FAST, ATTENTION, FAST_FP16, FAST_INT8 = "fast", "attention", "fast_fp16", "fast_int8"
GRAPH_ROLES = (FAST, ATTENTION, FAST_FP16, FAST_INT8)
REQUIRED_GRAPHS = (FAST, ATTENTION)

INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
HIDDEN_STATES, ATTENTION_PROBS = "last_hidden_state", "attention_probs"
LOGITS = "logits"  # a cross-encoder's graphs: (batch, num_labels), before any activation

# What a model is for. An embedder answers vectors; a cross-encoder scores pairs: `rerank`
# (one label, a relevance score) or `classify` (several labels).
EMBED, RERANK, CLASSIFY = "embed", "rerank", "classify"
TASKS = (EMBED, RERANK, CLASSIFY)
SCORE_ACTIVATIONS = ("sigmoid", "identity", "softmax")


class ArtifactError(ValueError):
    """A model directory that is missing, incomplete, corrupt or of the wrong format.

    The message names the file and the problem."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class GraphSpec:
    file: str
    precision: str  # fp32 | fp16 | int8
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fusions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "precision": self.precision,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "fusions": self.fusions,
        }


@dataclass(frozen=True)
class DenseSpec:
    """One Dense layer after pooling: activation(x Wᵀ + b), W and b in .npy files of the artifact."""

    weight: str  # file holding (out_features, in_features) float32
    bias: str | None  # file holding (out_features,) float32, or None
    activation: str  # identity | tanh | relu | sigmoid
    in_features: int
    out_features: int

    def to_dict(self) -> dict:
        return {
            "weight": self.weight,
            "bias": self.bias,
            "activation": self.activation,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    d_model: int
    n_layers: int
    n_heads: int
    max_len: int
    vocab_size: int
    pooling: str  # the default: one of artifact.pooling.POOLING_MODES
    normalize: bool  # the default: L2 after pooling and Dense (a Normalize module)
    opset: int
    graphs: dict[str, GraphSpec]
    files: dict[str, str]  # file name -> sha256, every file but the manifest
    provenance: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    encoder_config: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # format 2; a format-1 manifest reads as these defaults
    dense: tuple[DenseSpec, ...] = ()  # applied in order after pooling, before normalising
    prompts: dict[str, str] = field(default_factory=dict)  # prompt_name -> text prepended to the input
    default_prompt_name: str | None = None
    matryoshka_dims: tuple[int, ...] = ()  # truncations the model was trained for (then renormalise)
    sentence_transformers: dict = field(default_factory=dict)  # modules, max_seq_length, do_lower_case, ...
    # format 3; formats 1 and 2 read as an embedder
    task: str = EMBED
    labels: tuple[str, ...] = ()  # a cross-encoder's labels in id order (id2label)
    score_activation: str = "identity"  # what CrossEncoder.predict applies to the logits

    @property
    def is_cross_encoder(self) -> bool:
        return self.task != EMBED

    @property
    def embedding_dim(self) -> int:
        """Length of a sentence embedding: d_model, or the last Dense layer's out_features."""
        return self.dense[-1].out_features if self.dense else self.d_model

    def takes_token_type_ids(self, role: str) -> bool:
        return TOKEN_TYPE_IDS in self.graphs[role].inputs

    def to_dict(self) -> dict:
        cross_encoder = (
            {"task": self.task, "labels": list(self.labels), "score_activation": self.score_activation}
            if self.format_version >= CROSS_ENCODER_FORMAT
            else {}
        )
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "max_len": self.max_len,
            "vocab_size": self.vocab_size,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "opset": self.opset,
            "graphs": {role: spec.to_dict() for role, spec in self.graphs.items()},
            "files": self.files,
            "provenance": self.provenance,
            "quality": self.quality,
            "encoder_config": self.encoder_config,
            "embedding_dim": self.embedding_dim,
            "dense": [d.to_dict() for d in self.dense],
            "prompts": self.prompts,
            "default_prompt_name": self.default_prompt_name,
            "matryoshka_dims": list(self.matryoshka_dims),
            "sentence_transformers": self.sentence_transformers,
            **cross_encoder,
        }

    @classmethod
    def from_dict(cls, raw: object, source: Path) -> Manifest:
        if not isinstance(raw, dict):
            raise ArtifactError(f"{source}: expected a JSON object")
        version = raw.get("format_version")
        if version not in READABLE_FORMATS:
            readable = " and ".join(map(str, READABLE_FORMATS))
            raise ArtifactError(
                f"{source}: format_version {version!r} is not supported (this server reads {readable}); "
                "re-export the model with `python -m model export`"
            )
        try:
            graphs = {
                role: GraphSpec(
                    file=str(g["file"]),
                    precision=str(g["precision"]),
                    inputs=tuple(g["inputs"]),
                    outputs=tuple(g["outputs"]),
                    fusions=dict(g.get("fusions", {})),
                )
                for role, g in raw["graphs"].items()
            }
            manifest = cls(
                name=str(raw["name"]),
                version=str(raw["version"]),
                d_model=int(raw["d_model"]),
                n_layers=int(raw["n_layers"]),
                n_heads=int(raw["n_heads"]),
                max_len=int(raw["max_len"]),
                vocab_size=int(raw["vocab_size"]),
                pooling=str(raw["pooling"]),
                normalize=bool(raw["normalize"]),
                opset=int(raw["opset"]),
                graphs=graphs,
                files={str(k): str(v) for k, v in raw["files"].items()},
                provenance=dict(raw.get("provenance", {})),
                quality=dict(raw.get("quality", {})),
                encoder_config=dict(raw.get("encoder_config", {})),
                format_version=int(version),
                **(cls._format_2_fields(raw) if version >= 2 else {}),
                **(cls._format_3_fields(raw) if version >= CROSS_ENCODER_FORMAT else {}),
            )
        except KeyError as exc:
            raise ArtifactError(f"{source}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{source}: malformed field ({exc})") from None
        manifest.check_consistency(source)
        return manifest

    @staticmethod
    def _format_2_fields(raw: dict) -> dict:
        fields = {
            "dense": tuple(
                DenseSpec(
                    weight=str(d["weight"]),
                    bias=None if d["bias"] is None else str(d["bias"]),
                    activation=str(d["activation"]),
                    in_features=int(d["in_features"]),
                    out_features=int(d["out_features"]),
                )
                for d in raw["dense"]
            ),
            "prompts": {str(k): str(v) for k, v in raw["prompts"].items()},
            "default_prompt_name": None if raw["default_prompt_name"] is None else str(raw["default_prompt_name"]),
            "matryoshka_dims": tuple(int(n) for n in raw["matryoshka_dims"]),
            "sentence_transformers": dict(raw["sentence_transformers"]),
        }
        if int(raw["embedding_dim"]) != (fields["dense"][-1].out_features if fields["dense"] else int(raw["d_model"])):
            raise ValueError(f"embedding_dim {raw['embedding_dim']} does not follow from d_model and the Dense layers")
        return fields

    @staticmethod
    def _format_3_fields(raw: dict) -> dict:
        return {
            "task": str(raw["task"]),
            "labels": tuple(str(label) for label in raw["labels"]),
            "score_activation": str(raw["score_activation"]),
        }

    def check_consistency(self, source: Path) -> None:
        for role in REQUIRED_GRAPHS:
            if role not in self.graphs:
                raise ArtifactError(f"{source}: graph {role!r} is missing from the manifest")
        for role, spec in self.graphs.items():
            if role not in GRAPH_ROLES:
                raise ArtifactError(f"{source}: unknown graph role {role!r} (known: {', '.join(GRAPH_ROLES)})")
            if spec.file not in self.files:
                raise ArtifactError(f"{source}: graph {role!r} file {spec.file!r} has no checksum in 'files'")
        if TOKENIZER_FILE not in self.files:
            raise ArtifactError(f"{source}: {TOKENIZER_FILE} has no checksum in 'files'")
        modes = ("mean", "cls") if self.format_version == 1 else POOLING_MODES
        if self.pooling not in modes:
            raise ArtifactError(f"{source}: pooling {self.pooling!r} must be one of {', '.join(modes)}")
        width = self.d_model
        for i, dense in enumerate(self.dense):
            if dense.activation not in ACTIVATIONS:
                raise ArtifactError(f"{source}: dense[{i}] activation {dense.activation!r} is not one of {ACTIVATIONS}")
            if dense.in_features != width:
                raise ArtifactError(f"{source}: dense[{i}] takes {dense.in_features} features, gets {width}")
            width = dense.out_features
            for name in (dense.weight, dense.bias):
                if name is not None and name not in self.files:
                    raise ArtifactError(f"{source}: dense[{i}] file {name!r} has no checksum in 'files'")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ArtifactError(f"{source}: default_prompt_name {self.default_prompt_name!r} is not among the prompts")
        for n in self.matryoshka_dims:
            if not 0 < n <= self.embedding_dim:
                raise ArtifactError(f"{source}: matryoshka dimension {n} is outside 1..{self.embedding_dim}")
        if self.d_model % self.n_heads:
            raise ArtifactError(f"{source}: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        self._check_task(source)

    def _check_task(self, source: Path) -> None:
        if self.task not in TASKS:
            raise ArtifactError(f"{source}: task {self.task!r} must be one of {', '.join(TASKS)}")
        cross_encoder_format = self.format_version >= CROSS_ENCODER_FORMAT
        if self.is_cross_encoder != cross_encoder_format:
            raise ArtifactError(
                f"{source}: task {self.task!r} needs format_version "
                f"{CROSS_ENCODER_FORMAT if self.is_cross_encoder else FORMAT_VERSION}, not {self.format_version}"
            )
        if not self.is_cross_encoder:
            return
        if (self.task == RERANK) != (len(self.labels) == 1) or not self.labels:
            rule = "exactly one" if self.task == RERANK else "two or more"
            raise ArtifactError(f"{source}: task {self.task!r} has {len(self.labels)} labels; it needs {rule}")
        if self.score_activation not in SCORE_ACTIVATIONS:
            raise ArtifactError(
                f"{source}: score_activation {self.score_activation!r} must be one of {', '.join(SCORE_ACTIVATIONS)}"
            )
        for role, spec in self.graphs.items():
            if LOGITS not in spec.outputs:
                raise ArtifactError(f"{source}: graph {role!r} of a {self.task} model must output {LOGITS!r}")
            if TOKEN_TYPE_IDS not in spec.inputs and self.encoder_config.get("type_vocab_size", 0) > 1:
                raise ArtifactError(f"{source}: graph {role!r} of a pair model must take {TOKEN_TYPE_IDS!r}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    directory: Path
    manifest: Manifest

    @classmethod
    def load(cls, directory: Path | str, verify: bool = True) -> Artifact:
        directory = Path(directory)
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: model directory not found (build the default one with `make model`)")
        manifest_path = directory / MANIFEST_FILE
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{manifest_path}: file not found; is this an exported model directory?") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from None
        artifact = cls(directory, Manifest.from_dict(raw, manifest_path))
        if verify:
            artifact.verify()
        return artifact

    def verify(self) -> None:
        """Every listed file exists and has the checksum the manifest recorded."""
        for name, expected in self.manifest.files.items():
            path = self.directory / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ArtifactError(f"{self.directory / MANIFEST_FILE}: file name {name!r} leaves the directory")
            if not path.is_file():
                raise ArtifactError(f"{path}: file listed in the manifest is missing")
            actual = sha256_of(path)
            if actual != expected:
                raise ArtifactError(
                    f"{path}: checksum mismatch (manifest sha256 {expected[:12]}…, file {actual[:12]}…); "
                    "the file is corrupt or was changed after export"
                )

    def graph_path(self, role: str) -> Path:
        if role not in self.manifest.graphs:
            raise ArtifactError(f"{self.directory}: this artifact has no {role!r} graph")
        return self.directory / self.manifest.graphs[role].file

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER_FILE

    def dense_layers(self) -> tuple[Dense, ...]:
        """The Dense layers after pooling, their weights read from the artifact's .npy files."""
        layers = []
        for spec in self.manifest.dense:
            weight = self._array(spec.weight, (spec.out_features, spec.in_features))
            bias = None if spec.bias is None else self._array(spec.bias, (spec.out_features,))
            layers.append(Dense(weight, bias, spec.activation))
        return tuple(layers)

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.directory / name
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: not a readable .npy file ({exc})") from None
        if array.shape != shape or array.dtype != np.float32:
            raise ArtifactError(f"{path}: {array.dtype} {array.shape}, the manifest says float32 {shape}")
        return array
