"""The one decoder of packed vectors: little-endian float32, raw (gRPC tensors) or base64 (REST, KServe)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np


def decode_float32(data: bytes | str, shape: Sequence[int] | None = None) -> np.ndarray:
    """float32 values from raw bytes or their base64 text, reshaped to `shape` when given."""
    raw = base64.b64decode(data, validate=True) if isinstance(data, str) else data
    values = np.frombuffer(raw, dtype="<f4")
    return values if shape is None else values.reshape(tuple(shape))
