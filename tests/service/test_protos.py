"""The protos: committed stubs are what `make protos` generates, every field is documented, the
enums name exactly the modes the core implements, and our KServe v2 proto is wire-compatible
with the one NVIDIA's tritonclient was built from."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from artifact.pooling import POOLING_MODES
from protos.mhaserve.v1 import encoder_pb2 as pb
from service.core.attention import REDUCTIONS
from tests.support.server import REPO

PROTOS = REPO / "protos"
SOURCES = sorted(PROTOS.rglob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def make_protos(out: Path) -> None:
    # -o: never let `make` reinstall the environment from inside a test
    subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "protos", f"PROTOS_OUT={out}", f"PY={sys.executable}"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )


def descriptor_set(tmp_path: Path, proto: Path) -> descriptor_pb2.FileDescriptorSet:
    """Compile a .proto to descriptors without importing it into this process's pool."""
    out = tmp_path / "set.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--descriptor_set_out={out}",
            str(proto.relative_to(REPO)),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_committed_stubs_are_what_make_protos_generates(tmp_path):
    make_protos(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(REPO) for p in PROTOS.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))
    assert generated == committed, "stubs were added or removed without `make protos`"
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (REPO / p).read_bytes()]
    assert not stale, f"stale stubs, run `make protos` and commit: {stale}"


def test_every_proto_has_its_three_generated_modules():
    for source in SOURCES:
        for suffix in GENERATED_SUFFIXES:
            assert source.with_name(source.stem + suffix).is_file(), f"{source}: no {suffix}"


def test_stubs_import_as_a_package_path():
    # in a fresh interpreter, as another project would import them
    code = "from protos.mhaserve.v1 import encoder_pb2, encoder_pb2_grpc; print(encoder_pb2_grpc.EncoderStub.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "EncoderStub"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_field_rpc_and_enum_value_is_documented(source):
    lines = source.read_text().splitlines()
    declaration = re.compile(
        r"^\s*(rpc\s|(optional\s+|repeated\s+)?[\w.<>, ]+\s+\w+\s*=\s*\d+;|[A-Z][A-Z0-9_]+\s*=\s*\d+;)"
    )
    undocumented = []
    for i, line in enumerate(lines):
        if not declaration.match(line) or line.strip().startswith("//"):
            continue
        previous = lines[i - 1].strip() if i else ""
        if not previous.startswith("//"):
            undocumented.append(f"{source.name}:{i + 1}: {line.strip()}")
    assert not undocumented, "declarations without a comment above them:\n" + "\n".join(undocumented)


@pytest.mark.parametrize(
    ("enum", "prefix", "modes"),
    [(pb.Pooling, "POOLING_", POOLING_MODES), (pb.HeadReduction, "HEAD_REDUCTION_", REDUCTIONS)],
    ids=["Pooling", "HeadReduction"],
)
def test_each_proto_enum_names_exactly_the_cores_modes(enum, prefix, modes):
    # service.grpc.enums maps one to the other by name: a mode on one side only is unreachable or refused
    named = {name.removeprefix(prefix).lower() for name in enum.DESCRIPTOR.values_by_name} - {"unspecified"}
    assert named == set(modes), f"proto {enum.DESCRIPTOR.name} and the core differ: {sorted(named ^ set(modes))}"


def test_kserve_proto_matches_tritonclient_on_the_wire(tmp_path):
    """Every field number both protos use means the same field, of the same type, in both.

    (The published spec adds ModelMetadataResponse.properties, which Triton's proto lacks;
    protobuf skips fields it doesn't know, so that is compatible.)
    """
    from tritonclient.grpc import service_pb2 as triton

    ours = descriptor_set(tmp_path, PROTOS / "inference" / "grpc_predict_v2.proto").file[0]
    assert ours.package == "inference"
    triton_file = triton.DESCRIPTOR

    def compare(message: descriptor_pb2.DescriptorProto, theirs, path: str) -> None:
        for field in message.field:
            other = theirs.fields_by_number.get(field.number)
            if other is not None:
                assert (field.name, field.type) == (other.name, other.type), f"{path}.{field.name} differs on the wire"
        shared = {f.name for f in message.field} & set(theirs.fields_by_name)
        assert len(shared) >= len(theirs.fields) - 1, f"{path}: fields {set(theirs.fields_by_name) - shared} missing"
        for nested in message.nested_type:
            if not nested.options.map_entry:
                compare(nested, theirs.nested_types_by_name[nested.name], f"{path}.{nested.name}")

    for message in ours.message_type:
        compare(message, triton_file.message_types_by_name[message.name], message.name)
    (service,) = ours.service
    triton_methods = triton_file.services_by_name[service.name].methods_by_name
    for method in service.method:
        other = triton_methods[method.name]
        assert method.input_type.lstrip(".") == other.input_type.full_name
        assert method.output_type.lstrip(".") == other.output_type.full_name
