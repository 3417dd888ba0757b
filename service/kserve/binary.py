"""Triton's binary tensor data extension, which `tritonclient.http` uses by default.

A JSON header of `Inference-Header-Content-Length` bytes, then the raw tensors; each BYTES
element is a 4-byte little-endian length and its bytes. The gRPC protocol's
`raw_input_contents` carry BYTES tensors the same way.
"""

from __future__ import annotations

import struct

from service.errors import InvalidRequest

HEADER_LENGTH = "inference-header-content-length"


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
