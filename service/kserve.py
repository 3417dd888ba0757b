"""KServe v2 / Open Inference Protocol on both transports, as a translation onto the engine.

The model, named as in the manifest, takes a BYTES input `text` [n] (or [n, 1]) and gives FP32
`embedding` [n, d_model]; on request also `token_embeddings` [n, T, d_model] and `attention`
[n, layers, heads, T, T], padded with zeros to the longest input T, and INT32 `lengths` [n]
saying how much of each row is real. Options travel as request parameters (see PARAMETERS).

REST (a FastAPI router) also speaks Triton's binary tensor data extension, which
`tritonclient.http` uses by default: a JSON header of `Inference-Header-Content-Length` bytes,
then the raw tensors, each BYTES element a 4-byte little-endian length and its bytes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from service.disconnect import watch_disconnect
from service.errors import InvalidRequest, MhaserveError, NotFound, NotReady, Overloaded
from service.pipeline import Engine
from service.rest_models import ErrorResponse
from service.types import AttentionSelection, EmbedRequest, EmbedResult

KSERVE_SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "mhaserve"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "inference-header-content-length"

TEXT = "text"
EMBEDDING, TOKEN_EMBEDDINGS, ATTENTION, LENGTHS = "embedding", "token_embeddings", "attention", "lengths"
OUTPUTS = (EMBEDDING, TOKEN_EMBEDDINGS, ATTENTION, LENGTHS)

# Request parameters this model reads, with what they mean. "timeout" is Triton's (microseconds).
PARAMETERS = {
    "pooling": '"mean" or "cls" (default: the model\'s)',
    "normalize": "bool, L2-normalise embedding (default true)",
    "truncate": "bool, cut inputs at max_len tokens (default true)",
    "return_token_embeddings": "bool, add token_embeddings and lengths when no outputs are listed",
    "return_attention": "bool, add attention and lengths when no outputs are listed",
    "attention_layers": '"all" or comma-separated layer indices, e.g. "0,5" (default all)',
    "attention_heads": '"all" or comma-separated head indices (default all)',
    "timeout": "int, the request's deadline in microseconds",
}
IGNORED_PARAMETERS = ("binary_data_output", "priority")  # protocol-level: handled by the transport, or moot


class ErrorBody(BaseModel):
    """The protocol's error shape, which tritonclient reads."""

    error: str


# Documented in OpenAPI. A body over max_request_bytes is refused before routing, in mhaserve's own shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "missing or wrong API key",
        404: "no such model or version",
        422: "invalid request; the message says what to change",
        429: "queue full; retry after Retry-After seconds",
        500: "inference failed for this request's batch",
        503: "not ready, or shutting down",
        504: "deadline passed",
    }.items()
}
ERROR_RESPONSES[413] = {"model": ErrorResponse, "description": "body over max_request_bytes"}
NOT_READY_RESPONSE: dict[int | str, dict[str, Any]] = {503: {"description": "not ready: loading, draining or failing"}}
READY_RESPONSES = {**NOT_READY_RESPONSE, 404: ERROR_RESPONSES[404]}


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str  # FP32 | INT32
    array: np.ndarray  # little-endian, C order


# the model, transport-neutral ------------------------------------------------------------


class KServeModel:
    """The protocol's view of the engine: metadata, request parsing, output tensors."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def check_model(self, name: str, version: str | None) -> None:
        info = self.engine.info
        if info is None:
            raise NotReady("the model is still loading; retry in a few seconds")
        if name != info.name:
            raise NotFound(f"model {name!r} is not served here; this server serves {info.name!r}")
        if version and version != info.version:
            raise NotFound(f"model {name!r} has no version {version!r}; it has version {info.version!r}")

    def model_ready(self, name: str, version: str | None) -> bool:
        try:
            self.check_model(name, version)
        except NotReady:
            return False
        return self.engine.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        self.check_model(name, version)
        info = self.engine.info
        assert info is not None
        d = info.d_model
        return {
            "name": info.name,
            "versions": [info.version],
            "platform": PLATFORM,
            "inputs": [{"name": TEXT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": EMBEDDING, "datatype": "FP32", "shape": [-1, d]},
                {"name": TOKEN_EMBEDDINGS, "datatype": "FP32", "shape": [-1, -1, d]},
                {"name": ATTENTION, "datatype": "FP32", "shape": [-1, -1, -1, -1, -1]},
                {"name": LENGTHS, "datatype": "INT32", "shape": [-1]},
            ],
        }

    def embed_request(
        self, texts: list[str], parameters: dict[str, Any], requested: list[str], timeout_s: float | None
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
        selection = AttentionSelection(
            layers=index_parameter(parameters, "attention_layers"),
            heads=index_parameter(parameters, "attention_heads"),
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
            raise InvalidRequest(f"parameter 'pooling' must be a string, 'mean' or 'cls'; got {pooling!r}")
        request = EmbedRequest(
            inputs=tuple(texts),
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
    """ "all" (or absent) -> None; "0,5" or an integer -> the indices."""
    value = parameters.get(key, "all")
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, str):
        if value.strip() == "all":
            return None
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


def split_bytes_elements(raw: bytes | memoryview) -> list[bytes]:
    """BYTES tensor contents: each element is a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    view = memoryview(raw)
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidRequest("BYTES tensor data ends inside an element's 4-byte length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequest(f"BYTES tensor element {len(elements)} claims {length} bytes past the data's end")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


# REST -----------------------------------------------------------------------------------


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def kserve_errors(engine: Engine, route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Errors in the protocol's shape, {"error": message}, which tritonclient reads."""

    @functools.wraps(route)
    async def call(*args: Any, **kwargs: Any) -> Response:
        try:
            return await route(*args, **kwargs)
        except MhaserveError as error:
            engine.metrics.observe_error(error)
            response = json_response({"error": error.message}, error.http_status)
            if isinstance(error, Overloaded):  # as on the /v1 routes: when to come back
                response.headers["Retry-After"] = str(error.retry_after_s)
            return response

    return call


def flatten(data: Any) -> list:
    if not isinstance(data, list):
        raise InvalidRequest(f"tensor data must be a (nested) JSON list, got {type(data).__name__}")
    flat: list = []
    for item in data:
        flat.extend(flatten(item) if isinstance(item, list) else [item])
    return flat


def read_json(raw: bytes | memoryview, what: str) -> dict:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the {what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the {what} must be a JSON object")
    return value


def parse_rest_infer(body: bytes, header_length: str | None) -> tuple[dict, list[str]]:
    """The inference request object and the input's strings, from plain JSON or binary-extension bodies."""
    if header_length is None:
        header, binary = read_json(body, "request body"), memoryview(b"")
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {header_length!r} does not fit the {len(body)}-byte body"
            )
        split = int(header_length)
        header, binary = read_json(memoryview(body)[:split], "JSON header"), memoryview(body)[split:]
    tensor = only_input(header.get("inputs") or [])
    if not isinstance(tensor, dict):
        raise InvalidRequest("each entry of 'inputs' must be an object with name, datatype, shape and data")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
        raise InvalidRequest("input 'shape' must be a list of integers")
    binary_size = (tensor.get("parameters") or {}).get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size != len(binary):
            raise InvalidRequest(f"binary_data_size {binary_size!r} does not match the {len(binary)} bytes sent")
        elements: list = split_bytes_elements(binary)
    else:
        if len(binary):
            raise InvalidRequest("binary data was sent but no input declares binary_data_size")
        elements = flatten(tensor.get("data"))
        if not all(isinstance(e, str) for e in elements):
            raise InvalidRequest(f"input {TEXT!r} data must be strings")
    return header, texts_from(str(tensor.get("name")), str(tensor.get("datatype")), shape, elements)


def rest_infer_response(model: KServeModel, header: dict, result: EmbedResult, names: tuple[str, ...]) -> Response:
    parameters = header.get("parameters") or {}
    binary_default = parameters.get("binary_data_output") is True
    binary_wanted = {
        o.get("name"): (o.get("parameters") or {}).get("binary_data", binary_default)
        for o in header.get("outputs") or []
        if isinstance(o, dict)
    }
    outputs, chunks = [], []
    for t in model.output_tensors(result, names):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.array.shape)}
        if binary_wanted.get(t.name, binary_default) is True:
            chunk = t.array.tobytes()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = t.array.reshape(-1)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": result.model, "model_version": model.engine.manifest.version}
    if header.get("id"):
        body["id"] = header["id"]
    body["outputs"] = outputs
    head = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        b"".join([head, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def kserve_router(engine: Engine) -> APIRouter:
    """GET /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}][/ready]; POST .../infer."""
    model = KServeModel(engine)
    router = APIRouter(tags=["kserve v2"])

    def route(method: str, *paths: str, responses: dict | None = None) -> Callable:
        def register(function: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
            wrapped = kserve_errors(engine, function)
            for path in paths:
                router.add_api_route(path, wrapped, methods=[method], include_in_schema=True, responses=responses)
            return wrapped

        return register

    def authorized(request: Request) -> None:
        engine.keys.check(request.headers.get("authorization"))

    @route("GET", "/v2/health/live")
    async def server_live() -> Response:
        return json_response({"live": True})

    @route("GET", "/v2/health/ready", responses=NOT_READY_RESPONSE)
    async def server_ready() -> Response:
        return json_response({"ready": engine.ready}, 200 if engine.ready else 503)

    @route("GET", "/v2", responses=ERROR_RESPONSES)
    async def server_metadata(request: Request) -> Response:
        authorized(request)
        return json_response(model.server_metadata())

    @route("GET", "/v2/models/{name}", "/v2/models/{name}/versions/{version}", responses=ERROR_RESPONSES)
    async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
        authorized(request)
        return json_response(model.model_metadata(name, version))

    @route("GET", "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready", responses=READY_RESPONSES)
    async def model_ready(name: str, version: str | None = None) -> Response:
        ready = model.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    @route("POST", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer", responses=ERROR_RESPONSES)
    async def model_infer(request: Request, name: str, version: str | None = None) -> Response:
        authorized(request)
        model.check_model(name, version)
        body = await request.body()
        header, texts = parse_rest_infer(body, request.headers.get(HEADER_LENGTH))
        parameters = header.get("parameters") or {}
        requested = [str(o.get("name")) for o in header.get("outputs") or [] if isinstance(o, dict)]
        embed_request, names = model.embed_request(texts, parameters, requested, timeout_s=None)
        gone, watcher = watch_disconnect(request)
        try:
            result = await engine.embed(embed_request, is_disconnected=gone.is_set)
        finally:
            watcher.cancel()
        return rest_infer_response(model, header, result, names)

    return router


# gRPC -----------------------------------------------------------------------------------


class KServeGrpcServicer:
    """inference.GRPCInferenceService: the same translations as REST, on the generated messages.

    `messages` is the generated module, imported only when a server is built: tritonclient
    registers the same `inference.*` names in protobuf's default pool, so a process that
    imports this module for its REST router (a test, a client script) must not load them.
    """

    def __init__(self, engine: Engine, messages: Any):
        self.engine, self.model, self.pb = engine, KServeModel(engine), messages

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=self.engine.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        version = request.version if request.HasField("version") else None
        return self.pb.ModelReadyResponse(ready=self.model.model_ready(request.name, version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self.pb.ServerMetadataResponse(**self.model.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        version = request.version if request.HasField("version") else None
        return self.pb.ModelMetadataResponse(**self.model.model_metadata(request.name, version))

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        version = request.model_version if request.HasField("model_version") else None
        self.model.check_model(request.model_name, version)
        tensor = only_input(list(request.inputs))
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise InvalidRequest("raw_input_contents must hold exactly one entry per input")
            elements = split_bytes_elements(request.raw_input_contents[0])
        else:
            elements = list(tensor.contents.bytes_contents)
        texts = texts_from(tensor.name, tensor.datatype, list(tensor.shape), elements)
        parameters = {key: parameter_value(value) for key, value in request.parameters.items()}
        requested = [output.name for output in request.outputs]
        remaining = context.time_remaining()
        embed_request, names = self.model.embed_request(texts, parameters, requested, timeout_s=remaining)
        result = await self.engine.embed(embed_request, is_disconnected=context.cancelled)
        response = self.pb.ModelInferResponse(
            model_name=result.model, model_version=self.engine.manifest.version, id=request.id
        )
        for t in self.model.output_tensors(result, names):
            response.outputs.add(name=t.name, datatype=t.datatype, shape=t.array.shape)
            response.raw_output_contents.append(t.array.tobytes())
        return response


def parameter_value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def kserve_grpc_methods(engine: Engine) -> dict[str, tuple[Callable, type, bool]]:
    """Method name -> (servicer method, request message type, whether an API key is needed)."""
    from protos.inference import grpc_predict_v2_pb2 as messages  # see KServeGrpcServicer

    servicer = KServeGrpcServicer(engine, messages)
    return {
        "ServerLive": (servicer.ServerLive, messages.ServerLiveRequest, False),
        "ServerReady": (servicer.ServerReady, messages.ServerReadyRequest, False),
        "ModelReady": (servicer.ModelReady, messages.ModelReadyRequest, False),
        "ServerMetadata": (servicer.ServerMetadata, messages.ServerMetadataRequest, True),
        "ModelMetadata": (servicer.ModelMetadata, messages.ModelMetadataRequest, True),
        "ModelInfer": (servicer.ModelInfer, messages.ModelInferRequest, True),
    }
