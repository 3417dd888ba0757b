"""The proto's Pooling, HeadReduction and AttentionBlock values and the core's names for them, for the gRPC
server and the Python client alike.

A value's name is the enum's prefix and the core's name upper-cased (POOLING_MEAN_SQRT_LEN_TOKENS
is "mean_sqrt_len_tokens"), so the tables follow artifact.pooling.POOLING_MODES and
service.core.attention.REDUCTIONS and service.core.pairs.BLOCKS: a new mode needs its proto value and nothing here.
"""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from artifact.pooling import POOLING_MODES
from protos.mhaserve.v1 import encoder_pb2 as pb
from service.core.attention import REDUCTIONS
from service.core.pairs import BLOCKS


def enum_values(enum: EnumTypeWrapper, prefix: str, names: tuple[str, ...]) -> dict[str, int]:
    """name -> proto value; a name the proto lacks fails here, at import, not on a request."""
    return {name: enum.Value(f"{prefix}{name.upper()}") for name in names}


POOLING_VALUES = enum_values(pb.Pooling, "POOLING_", POOLING_MODES)
HEAD_REDUCTION_VALUES = enum_values(pb.HeadReduction, "HEAD_REDUCTION_", REDUCTIONS)
# proto value -> name; UNSPECIFIED means the model's default pooling, and each head on its own
POOLING_NAMES = {pb.POOLING_UNSPECIFIED: None} | {value: name for name, value in POOLING_VALUES.items()}
HEAD_REDUCTION_NAMES = {pb.HEAD_REDUCTION_UNSPECIFIED: "none"} | {
    value: name for name, value in HEAD_REDUCTION_VALUES.items()
}
ATTENTION_BLOCK_VALUES = enum_values(pb.AttentionBlock, "ATTENTION_BLOCK_", BLOCKS)
ATTENTION_BLOCK_NAMES = {pb.ATTENTION_BLOCK_UNSPECIFIED: "full"} | {
    value: name for name, value in ATTENTION_BLOCK_VALUES.items()
}
