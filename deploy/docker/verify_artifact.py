"""Check an exported model directory against its manifest: every listed file present, with the
sha256 the export recorded, and nothing else beside them. Exit 0 when it matches.

Standalone on purpose (the standard library only), so it runs on the host before `make image`
copies the directory and inside the build on the bare base image; the server checks the same
checksums again at start-up.

With --drop-precision P (the CPU image drops fp16: onnxruntime's CPU provider has no fp16
kernels), the graphs of that precision leave the directory and its manifest (both their entries:
graphs and files) once the whole directory has checked out; the rest is checked again.

    python3 deploy/docker/verify_artifact.py [--drop-precision P] DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path, PurePosixPath


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problems(directory: Path) -> list[str]:
    manifest_path = directory / "manifest.json"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except FileNotFoundError:
        return [f"{manifest_path}: not found; is {directory} an exported model directory (make model)?"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{manifest_path}: not a manifest with a 'files' table ({exc!r})"]
    found = []
    for name, expected in sorted(files.items()):
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts:
            found.append(f"{manifest_path}: file name {name!r} leaves the directory")
            continue
        path = directory / name
        if not path.is_file():
            found.append(f"{path}: listed in the manifest, missing")
        elif (actual := sha256_of(path)) != expected:
            found.append(f"{path}: sha256 {actual[:12]}…, the manifest says {expected[:12]}…")
    listed = set(files) | {"manifest.json"}
    extra = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    found += [f"{directory / name}: not in the manifest" for name in extra if name not in listed]
    return found


def drop_precision(directory: Path, precision: str) -> list[str]:
    """Remove the graphs of one precision from the directory and its manifest; their file names."""
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    roles = [role for role, graph in manifest["graphs"].items() if graph.get("precision") == precision]
    dropped = []
    for role in roles:
        name = manifest["graphs"].pop(role)["file"]
        manifest["files"].pop(name)
        (directory / name).unlink()
        dropped.append(name)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return dropped


def main(argv: list[str]) -> int:
    usage = __doc__.strip().splitlines()[-1].strip()
    precision = None
    if len(argv) == 3 and argv[0] == "--drop-precision":
        precision, argv = argv[1], argv[2:]
    if len(argv) != 1:
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    directory = Path(argv[0])
    found = problems(directory)
    if not found and precision is not None:
        for name in drop_precision(directory, precision):
            print(f"artifact check: {directory / name}: {precision}, left out")
        found = problems(directory)
    for problem in found:
        print(f"artifact check: {problem}", file=sys.stderr)
    if not found:
        print(f"artifact check: {directory}: every file matches manifest.json")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
