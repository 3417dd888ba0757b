"""The artifact: the contract between model/ (which writes it) and service/ (which serves it).

A directory holding manifest.json, tokenizer.json and ONNX graphs. The manifest lists every
other file with its sha256; `Artifact.load` refuses a directory where anything is missing,
altered or of an unknown format, naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"

# Graph roles. "fast" outputs hidden states through fused attention kernels; "attention"
# computes attention explicitly and also outputs its probabilities.
FAST, ATTENTION, FAST_FP16, FAST_INT8 = "fast", "attention", "fast_fp16", "fast_int8"
GRAPH_ROLES = (FAST, ATTENTION, FAST_FP16, FAST_INT8)
REQUIRED_GRAPHS = (FAST, ATTENTION)

INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"
HIDDEN_STATES, ATTENTION_PROBS = "last_hidden_state", "attention_probs"


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
class Manifest:
    name: str
    version: str
    d_model: int
    n_layers: int
    n_heads: int
    max_len: int
    vocab_size: int
    pooling: str  # mean | cls
    normalize: bool
    opset: int
    graphs: dict[str, GraphSpec]
    files: dict[str, str]  # file name -> sha256, every file but the manifest
    provenance: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    encoder_config: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
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
        }

    @classmethod
    def from_dict(cls, raw: object, source: Path) -> Manifest:
        if not isinstance(raw, dict):
            raise ArtifactError(f"{source}: expected a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: format_version {version!r} is not supported (this server reads {FORMAT_VERSION}); "
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
            )
        except KeyError as exc:
            raise ArtifactError(f"{source}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{source}: malformed field ({exc})") from None
        manifest.check_consistency(source)
        return manifest

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
        if self.pooling not in ("mean", "cls"):
            raise ArtifactError(f"{source}: pooling {self.pooling!r} must be 'mean' or 'cls'")
        if self.d_model % self.n_heads:
            raise ArtifactError(f"{source}: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


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
