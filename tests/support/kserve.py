"""tritonclient's side of the KServe v2 tests: a BYTES `text` input for either flavour, and the
answer's header as a dict."""

from __future__ import annotations

import numpy as np
import tritonclient.http as triton_http


def text_input(module, texts: list[str], binary: bool = True):
    tensor = module.InferInput("text", [len(texts)], "BYTES")
    data = np.array([t.encode() for t in texts], dtype=object)
    if module is triton_http:
        tensor.set_data_from_numpy(data, binary_data=binary)
    else:
        tensor.set_data_from_numpy(data)
    return tensor


def response_json(result) -> dict:
    """The response header as a dict, from either flavour's InferResult."""
    return result.get_response() if isinstance(result, triton_http.InferResult) else result.get_response(as_json=True)
