"""KServe v2 over gRPC: inference.GRPCInferenceService on the generated messages.

The same translations as REST (service.kserve.model); the gRPC edge (service.grpc.edge)
parses the request bytes, checks keys and turns errors into status codes. Only the gRPC
server imports this module: tritonclient registers the same `inference.*` names in
protobuf's default pool, so the REST side must not load these messages.
"""

from __future__ import annotations

from typing import Any

from protos.inference import grpc_predict_v2_pb2 as pb
from service.core.capacity import Ticket
from service.core.models import Models
from service.errors import InvalidRequest
from service.grpc.edge import Context, Rpc
from service.kserve.binary import split_bytes_elements
from service.kserve.model import KSERVE_SERVICE, KServeModel, only_input, texts_from

SERVICE = KSERVE_SERVICE


class KServeServicer:
    RPCS = (
        Rpc("ServerLive", pb.ServerLiveRequest, needs_key=False),
        Rpc("ServerReady", pb.ServerReadyRequest, needs_key=False),
        Rpc("ModelReady", pb.ModelReadyRequest, needs_key=False),
        Rpc("ServerMetadata", pb.ServerMetadataRequest),
        Rpc("ModelMetadata", pb.ModelMetadataRequest),
        Rpc("ModelInfer", pb.ModelInferRequest, admits=lambda m: (m.model_name, infer_texts(m))),
    )

    def __init__(self, models: Models):
        self.models, self.model = models, KServeModel(models)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.models.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        version = request.version if request.HasField("version") else None
        return pb.ModelReadyResponse(ready=self.model.model_ready(request.name, version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.model.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        version = request.version if request.HasField("version") else None
        return pb.ModelMetadataResponse(**self.model.model_metadata(request.name, version))

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context, ticket: Ticket
    ) -> pb.ModelInferResponse:
        version = request.model_version if request.HasField("model_version") else None
        info = self.model.check_model(request.model_name, version)
        texts = infer_texts(request)
        parameters = {key: parameter_value(value) for key, value in request.parameters.items()}
        requested = [output.name for output in request.outputs]
        remaining = context.time_remaining()
        embed_request, names = self.model.embed_request(info.name, texts, parameters, requested, timeout_s=remaining)
        result = await self.models.embed(embed_request, is_disconnected=context.cancelled, ticket=ticket)
        context.set_trailing_metadata(result.timings.fields())  # the edge adds x-total-time
        response = pb.ModelInferResponse(model_name=result.model, model_version=info.version, id=request.id)
        for t in self.model.output_tensors(result, names):
            response.outputs.add(name=t.name, datatype=t.datatype, shape=t.array.shape)
            response.raw_output_contents.append(t.array.tobytes())
        return response


def infer_texts(request: pb.ModelInferRequest) -> list[str]:
    """The texts of the request's one input tensor, inline or in raw_input_contents."""
    tensor = only_input(list(request.inputs))
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidRequest("raw_input_contents must hold exactly one entry per input")
        elements = split_bytes_elements(request.raw_input_contents[0])
    else:
        elements = list(tensor.contents.bytes_contents)
    return texts_from(tensor.name, tensor.datatype, list(tensor.shape), elements)


def parameter_value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None
