"""What both sides need to know about the machine the graphs run on."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def cuda_usable() -> bool:
    """True only when the CUDA driver loads and reports a device.

    onnxruntime-gpu lists CUDAExecutionProvider as available even on a machine with no GPU,
    and asking for it there prints a provider error; the driver itself is the honest test.
    """
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0
