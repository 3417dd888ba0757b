"""KServe v2 / Open Inference Protocol: the model as the protocol sees it, for both transports.

The model, named as in the manifest, takes a BYTES input `text` [n] (or [n, 1]) and gives FP32
`embedding` [n, embedding_dim]; on request also `token_embeddings` [n, T, d_model] and `attention`
[n, layers', heads', rows', T] (the REST answer's axes), padded with zeros to the longest input
T, and INT32 `lengths` [n] saying how much of each row is real. Options travel as request
parameters (see PARAMETERS). The wire codecs are service.kserve.rest (JSON and Triton's binary
extension) and service.kserve.grpc; this module knows neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from service.core.models import Models
from service.errors import InvalidRequest, NotFound, NotReady
from service.types import AttentionSelection, EmbedRequest, EmbedResult, ModelInfo

KSERVE_SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "mhaserve"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data",)

TEXT = "text"
EMBEDDING, TOKEN_EMBEDDINGS, ATTENTION, LENGTHS = "embedding", "token_embeddings", "attention", "lengths"
OUTPUTS = (EMBEDDING, TOKEN_EMBEDDINGS, ATTENTION, LENGTHS)

# Request parameters this model reads, with what they mean. "timeout" is Triton's (microseconds).
PARAMETERS = {
    "pooling": '"mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean" or "lasttoken" (default: the model\'s)',
    "prompt_name": "one of the model's prompts, prepended to every input (default: the model's default prompt)",
    "normalize": "bool, L2-normalise embedding (default true)",
    "truncate": "bool, cut inputs at max_len tokens (default true)",
    "return_token_embeddings": "bool, add token_embeddings and lengths when no outputs are listed",
    "return_attention": "bool, add attention and lengths when no outputs are listed",
    "attention_layers": '"all" or comma-separated layer indices, e.g. "0,5" (default all)',
    "attention_heads": '"all" or comma-separated head indices (default all)',
    "attention_reduce_heads": '"none", "mean" or "max" over the selected heads (default "none")',
    "attention_rollout": "bool, attention rollout through the selected layers (default false)",
    "attention_rows": '"all" or comma-separated query positions, e.g. "0" for [CLS] (default all)',
    "timeout": "int, the request's deadline in microseconds",
}
IGNORED_PARAMETERS = ("binary_data_output", "priority")  # protocol-level: handled by the transport, or moot


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str  # FP32 | INT32
    array: np.ndarray  # little-endian, C order


class KServeModel:
    """The protocol's view of the served models: metadata, request parsing, output tensors."""

    def __init__(self, models: Models):
        self.models = models

    def check_model(self, name: str, version: str | None) -> ModelInfo:
        """The model named (NotFound lists the served ones); NotReady while loading or draining."""
        if not name:
            raise NotFound(f"name a model: this server serves {', '.join(map(repr, self.models.names))}")
        info = self.models.model_info(name)
        if version and version != info.version:
            raise NotFound(f"model {name!r} has no version {version!r}; it has version {info.version!r}")
        return info

    def model_ready(self, name: str, version: str | None) -> bool:
        try:
            self.check_model(name, version)
        except NotReady:
            return False
        return self.models.engine(name).ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        info = self.check_model(name, version)
        return {
            "name": info.name,
            "versions": [info.version],
            "platform": PLATFORM,
            "inputs": [{"name": TEXT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": EMBEDDING, "datatype": "FP32", "shape": [-1, info.embedding_dim]},
                {"name": TOKEN_EMBEDDINGS, "datatype": "FP32", "shape": [-1, -1, info.d_model]},
                {"name": ATTENTION, "datatype": "FP32", "shape": [-1, -1, -1, -1, -1]},
                {"name": LENGTHS, "datatype": "INT32", "shape": [-1]},
            ],
        }

    def embed_request(
        self, model: str, texts: list[str], parameters: dict[str, Any], requested: list[str], timeout_s: float | None
    ) -> tuple[EmbedRequest, tuple[str, ...]]:
        """The engine request for an infer call, and the names of the outputs to send back."""
        for key in parameters:
            if key not in PARAMETERS and key not in IGNORED_PARAMETERS:
                known = ", ".join(f"{k} ({v})" for k, v in PARAMETERS.items())
                raise InvalidRequest(f"unknown parameter {key!r}; this model reads: {known}")
        for name in requested:
            if name not in OUTPUTS:
                raise InvalidRequest(f"unknown output {name!r}; this model gives {', '.join(OUTPUTS)}")
        if requested:
            outputs = tuple(dict.fromkeys(requested))
        else:
            outputs = (EMBEDDING,)
            if bool_parameter(parameters, "return_token_embeddings"):
                outputs += (TOKEN_EMBEDDINGS,)
            if bool_parameter(parameters, "return_attention"):
                outputs += (ATTENTION,)
            if len(outputs) > 1:
                outputs += (LENGTHS,)
        reduce_heads = parameters.get("attention_reduce_heads", "none")
        if not isinstance(reduce_heads, str):
            raise InvalidRequest(
                f"parameter 'attention_reduce_heads' must be a string, 'none', 'mean' or 'max'; got {reduce_heads!r}"
            )
        selection = AttentionSelection(
            layers=index_parameter(parameters, "attention_layers"),
            heads=index_parameter(parameters, "attention_heads"),
            reduce_heads=reduce_heads,
            rollout=bool_parameter(parameters, "attention_rollout"),
            rows=index_parameter(parameters, "attention_rows"),
        )
        if "timeout" in parameters:
            microseconds = parameters["timeout"]
            if isinstance(microseconds, bool) or not isinstance(microseconds, int) or microseconds <= 0:
                raise InvalidRequest(
                    f"parameter 'timeout' must be a positive integer (microseconds), got {microseconds!r}"
                )
            timeout_s = min(timeout_s or float("inf"), microseconds / 1e6)
        pooling = parameters.get("pooling")
        if pooling is not None and not isinstance(pooling, str):
            raise InvalidRequest(f"parameter 'pooling' must be a string such as 'mean' or 'cls'; got {pooling!r}")
        prompt_name = parameters.get("prompt_name")
        if prompt_name is not None and not isinstance(prompt_name, str):
            raise InvalidRequest(f"parameter 'prompt_name' must be a string; got {prompt_name!r}")
        request = EmbedRequest(
            inputs=tuple(texts),
            model=model,
            prompt_name=prompt_name,
            pooling=pooling,
            normalize=bool_parameter(parameters, "normalize", default=True),
            truncate=bool_parameter(parameters, "truncate", default=True),
            return_token_embeddings=TOKEN_EMBEDDINGS in outputs,
            attention=selection if ATTENTION in outputs else None,
            timeout_s=timeout_s,
        )
        return request, outputs

    @staticmethod
    def output_tensors(result: EmbedResult, names: tuple[str, ...]) -> list[OutputTensor]:
        lengths = np.asarray(result.token_counts, dtype="<i4")
        tensors = []
        for name in names:
            if name == EMBEDDING:
                tensors.append(OutputTensor(name, "FP32", np.ascontiguousarray(result.embeddings, dtype="<f4")))
            elif name == LENGTHS:
                tensors.append(OutputTensor(name, "INT32", lengths))
            elif name == TOKEN_EMBEDDINGS:
                assert result.token_embeddings is not None
                tensors.append(OutputTensor(name, "FP32", pad(result.token_embeddings, axes=(0,))))
            elif name == ATTENTION:
                assert result.attention is not None
                tensors.append(OutputTensor(name, "FP32", pad(result.attention, axes=(2, 3))))
        return tensors


def server_version() -> str:
    try:
        return metadata.version("mhaserve")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def pad(arrays: list[np.ndarray], axes: tuple[int, ...]) -> np.ndarray:
    """Stack arrays whose `axes` differ in size, zero-padding those axes to the largest."""
    shape = list(arrays[0].shape)
    for axis in axes:
        shape[axis] = max(a.shape[axis] for a in arrays)
    out = np.zeros((len(arrays), *shape), dtype="<f4")
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return out


def bool_parameter(parameters: dict[str, Any], key: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"parameter {key!r} must be a bool, got {value!r}")
    return value


def index_parameter(parameters: dict[str, Any], key: str) -> tuple[int, ...] | None:
    """ "all" (or absent) -> None; "0,5" or an integer -> the indices; "" -> none, which the engine refuses."""
    value = parameters.get(key, "all")
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, str):
        if value.strip() == "all":
            return None
        if not value.strip():
            return ()
        try:
            return tuple(int(part) for part in value.split(","))
        except ValueError:
            pass
    raise InvalidRequest(f'parameter {key!r} must be "all" or comma-separated indices like "0,5"; got {value!r}')


def texts_from(name: str, datatype: str, shape: list[int], elements: list[bytes] | list[str]) -> list[str]:
    """Checks the one input the model takes and returns its strings."""
    if name != TEXT:
        raise InvalidRequest(f"unknown input {name!r}: this model takes one BYTES input named {TEXT!r}")
    if datatype != "BYTES":
        raise InvalidRequest(f"input {TEXT!r} must have datatype BYTES, got {datatype!r}")
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(n < 0 for n in shape):
        raise InvalidRequest(f"input {TEXT!r} must have shape [n] or [n, 1], got {shape}")
    if shape[0] != len(elements):
        raise InvalidRequest(f"input {TEXT!r} has shape {shape} but {len(elements)} elements")
    texts = []
    for i, element in enumerate(elements):
        if isinstance(element, str):
            texts.append(element)
            continue
        try:
            texts.append(bytes(element).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidRequest(f"input {TEXT!r} element {i} is not valid UTF-8") from None
    return texts


def only_input(inputs: list[Any]) -> Any:
    if len(inputs) != 1:
        raise InvalidRequest(f"this model takes exactly one input ({TEXT!r}), got {len(inputs)}")
    return inputs[0]
