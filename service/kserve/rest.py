"""KServe v2 over REST: the protocol's routes, in JSON or Triton's binary tensor extension.

GET /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}[/versions/{v}][/ready];
POST /v2/models/{name}[/versions/{v}]/infer. Errors take the protocol's {"error": message}
shape at the REST edge (service.http.edge), keys are checked by the same dependency as
every data route.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from service.errors import InvalidRequest
from service.http.data_routes import KSERVE_INFER_PATHS
from service.http.deps import Authorized, ModelsDep
from service.http.edge import embed_until_disconnected, error_responses, json_response
from service.http.schemas import timing_headers
from service.kserve.binary import HEADER_LENGTH, split_bytes_elements
from service.kserve.model import TEXT, KServeModel, only_input, texts_from
from service.types import EmbedResult

router = APIRouter(tags=["kserve v2"])
ERRORS = error_responses(401, 404, 413, 422, 429, 500, 503, 504, kserve=True)
NOT_READY = {503: {"description": "not ready: loading, draining or failing"}}


@router.get("/v2/health/live")
async def server_live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready", responses=NOT_READY)
async def server_ready(models: ModelsDep) -> Response:
    return json_response({"ready": models.ready}, 200 if models.ready else 503)


@router.get("/v2", responses=ERRORS)
async def server_metadata(models: ModelsDep, _: Authorized) -> Response:
    return json_response(KServeModel(models).server_metadata())


@router.get("/v2/models/{name}", responses=ERRORS)
@router.get("/v2/models/{name}/versions/{version}", responses=ERRORS)
async def model_metadata(models: ModelsDep, _: Authorized, name: str, version: str | None = None) -> Response:
    return json_response(KServeModel(models).model_metadata(name, version))


@router.get("/v2/models/{name}/ready", responses={**NOT_READY, 404: ERRORS[404]})
@router.get("/v2/models/{name}/versions/{version}/ready", responses={**NOT_READY, 404: ERRORS[404]})
async def model_ready(models: ModelsDep, name: str, version: str | None = None) -> Response:
    ready = KServeModel(models).model_ready(name, version)
    return json_response({"name": name, "ready": ready}, 200 if ready else 503)


@router.post(KSERVE_INFER_PATHS[0], responses=ERRORS)
@router.post(KSERVE_INFER_PATHS[1], responses=ERRORS)
async def model_infer(
    request: Request, models: ModelsDep, _: Authorized, name: str, version: str | None = None
) -> Response:
    model = KServeModel(models)
    info = model.check_model(name, version)
    header, texts = parse_infer(await request.body(), request.headers.get(HEADER_LENGTH))
    parameters = header.get("parameters") or {}
    requested = [str(o.get("name")) for o in header.get("outputs") or [] if isinstance(o, dict)]
    embed_request, names = model.embed_request(info.name, texts, parameters, requested, timeout_s=None)
    result = await embed_until_disconnected(models, request, embed_request)
    return infer_response(header, result, info.version, names)


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


def parse_infer(body: bytes, header_length: str | None) -> tuple[dict, list[str]]:
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


def infer_response(header: dict, result: EmbedResult, version: str, names: tuple[str, ...]) -> Response:
    """The answer, JSON or with the binary extension, with the stages' timing headers."""
    parameters = header.get("parameters") or {}
    binary_default = parameters.get("binary_data_output") is True
    binary_wanted = {
        o.get("name"): (o.get("parameters") or {}).get("binary_data", binary_default)
        for o in header.get("outputs") or []
        if isinstance(o, dict)
    }
    outputs, chunks = [], []
    for t in KServeModel.output_tensors(result, names):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.array.shape)}
        if binary_wanted.get(t.name, binary_default) is True:
            chunk = t.array.tobytes()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = t.array.reshape(-1)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": result.model, "model_version": version}
    if header.get("id"):
        body["id"] = header["id"]
    body["outputs"] = outputs
    head = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    timings = timing_headers(result)
    if not chunks:
        return Response(head, media_type="application/json", headers=timings)
    return Response(
        b"".join([head, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head)), **timings},
    )
