"""The hashed requirements an image's virtual environment installs, from the committed locks.

    image_requirements.py cpu          requirements/runtime.txt without onnxruntime-gpu, plus
                                       requirements/image-cpu.txt (onnxruntime, the CPU wheel of
                                       the same version: no CUDA or TensorRT provider libraries)
    image_requirements.py gpu          requirements/runtime.txt plus requirements/image-gpu.txt
                                       (CUDA and cuDNN wheels that onnxruntime-gpu preloads)
    image_requirements.py check-cpu PY PY's environment: onnxruntime is the CPU wheel of the
                                       locked version, and `pip check` finds nothing but the
                                       swap (the package declares onnxruntime-gpu)

Both onnxruntime wheels install the same module, so an environment must have only one; the CPU
image's is the plain wheel. `make lock-image` writes image-cpu.txt and image-gpu.txt.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"
GPU_WHEEL, CPU_WHEEL = "onnxruntime-gpu", "onnxruntime"


def blocks(text: str) -> dict[str, tuple[str, str]]:
    """name -> (version, the requirement's lines) of a `uv pip compile --generate-hashes` lock."""
    found: dict[str, tuple[str, str]] = {}
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        match = re.match(r"([A-Za-z0-9._-]+)==([^ ;\\]+)", lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].startswith(" "):
            i += 1
        found[match.group(1).lower()] = (match.group(2), "".join(lines[start:i]))
    return found


def read_lock(name: str) -> dict[str, tuple[str, str]]:
    return blocks((REQUIREMENTS / name).read_text())


def cpu_requirements() -> str:
    runtime, cpu = read_lock("runtime.txt"), read_lock("image-cpu.txt")
    gpu_version, cpu_version = runtime[GPU_WHEEL][0], cpu[CPU_WHEEL][0]
    if gpu_version != cpu_version:
        raise SystemExit(
            f"requirements/image-cpu.txt has {CPU_WHEEL}=={cpu_version}, requirements/runtime.txt "
            f"{GPU_WHEEL}=={gpu_version}: run `make lock-image`"
        )
    return "".join(lines for name, (_, lines) in runtime.items() if name != GPU_WHEEL) + cpu[CPU_WHEEL][1]


def gpu_requirements() -> str:
    runtime, gpu = read_lock("runtime.txt"), read_lock("image-gpu.txt")
    both = sorted(set(runtime) & set(gpu))
    if both:
        raise SystemExit(f"requirements/image-gpu.txt repeats {', '.join(both)} of runtime.txt: run `make lock-image`")
    return "".join(lines for _, lines in runtime.values()) + "".join(lines for _, lines in gpu.values())


def check_cpu(python: str) -> int:
    version = read_lock("image-cpu.txt")[CPU_WHEEL][0]
    probe = (
        "import importlib.metadata as m, onnxruntime as ort;"
        "print(m.version('onnxruntime'), ort.__version__, ','.join(ort.get_available_providers()))"
    )
    installed = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    gpu_providers = [p for p in installed[2].split(",") if p.startswith(("CUDA", "Tensorrt"))]
    if installed[:2] != [version, version] or gpu_providers:
        print(f"the CPU image's onnxruntime is not the CPU wheel {version}: {installed}", file=sys.stderr)
        return 1
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    allowed = re.compile(rf"mhaserve \S+ requires {GPU_WHEEL}, which is not installed\.")
    unexpected = [line for line in check.stdout.splitlines() if line.strip() and not allowed.fullmatch(line.strip())]
    if unexpected:
        print("pip check:\n" + "\n".join(unexpected), file=sys.stderr)
        return 1
    print(f"onnxruntime {version} (CPU wheel, providers {installed[2]}); pip check: nothing but the swap")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["cpu"]:
        sys.stdout.write(cpu_requirements())
        return 0
    if argv == ["gpu"]:
        sys.stdout.write(gpu_requirements())
        return 0
    if len(argv) == 2 and argv[0] == "check-cpu":
        return check_cpu(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
