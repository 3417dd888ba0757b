"""Settings: the one configuration object, from CLI flags and MHASERVE_* environment variables.

Each field is declared once, with its help text and type; the CLI (`mhaserve serve --help`),
the environment variable names, docs/settings.md and the Kubernetes ConfigMap check all come
from this class, and pydantic parses and checks every value. Precedence: flag > environment
> default. `Settings()` alone is the defaults; `load_settings` reads flags and environment.
"""

from __future__ import annotations

import argparse
import os
import ssl
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MHASERVE_"
DEFAULT_MODEL_DIR = "artifacts/all-minilm-l6-v2"


class SettingsError(ValueError):
    pass


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    return Field(default=default, description=help, json_schema_extra={"secret": secret})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=False)

    # where and what
    model_dir: Annotated[tuple[Path, ...], NoDecode] = setting(
        (Path(DEFAULT_MODEL_DIR),),
        "exported model directory (manifest.json, graphs, tokenizer); repeat the flag (or list them, "
        "comma-separated) to serve several models, each under its manifest's name; the first is the default",
    )
    backend: Literal["onnx", "fake"] = setting(
        "onnx",
        "what computes: onnx, the --model-dir artifacts through onnxruntime; fake, a deterministic stand-in "
        "served as the model 'fake' with no artifact and no onnxruntime (for tests and demos: its vectors mean "
        "nothing)",
    )
    fake_batch_ms: float = setting(0.0, "with --backend fake: how long each batch takes (a slow runtime)")
    fake_task: Annotated[tuple[Literal["embed", "rerank", "classify"], ...], NoDecode] = setting(
        ("embed",),
        "with --backend fake: what each fake model does, one model per task listed (comma-separated), the "
        "first the default: embed (served as 'fake'), rerank ('fake-rerank', a cross-encoder scoring pairs by "
        "shared words) or classify ('fake-classify', three labels); see service/backends/fake.py",
    )
    host: str = setting("0.0.0.0", "address both servers bind")
    http_port: int = setting(8000, "REST port (FastAPI; also KServe v2 REST, /metrics, /ui)")
    grpc_port: int = setting(50051, "gRPC port (mhaserve.v1.Encoder, KServe v2, health, reflection)")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto: CUDA when a GPU is usable, else CPU")
    precision: Literal["auto", "fp32", "fp16", "int8"] = setting(
        "auto", "graph precision; auto: fp16 on CUDA, fp32 on CPU"
    )
    inference_workers: int = setting(
        0,
        "batches computed at once, each on its own thread; 0 = auto: on a CPU with 2+ cores and "
        "--intra-op-threads auto, 2 (a batch's parallel sections stall whenever the serving loop takes one of "
        "their cores; two single-threaded batches don't), else 1",
    )
    intra_op_threads: int = setting(
        0, "onnxruntime intra-op threads per worker; 0 = the usable cores divided by --inference-workers"
    )
    inference_nice: int = setting(
        10,
        "nice value (0-19) of the inference threads on Linux; the event loop that parses, refuses and answers "
        "requests then outranks compute, so refusals stay fast under overload. 0 = same priority",
    )
    # batching
    max_batch_tokens: int = setting(16384, "a batch leaves when its padded tokens (longest x count) would pass this")
    max_batch_size: int = setting(64, "most sequences in one batch")
    max_wait_ms: float = setting(2.0, "longest the oldest queued sequence waits for company before its batch leaves")
    batch_wait: Literal["adaptive", "always"] = setting(
        "adaptive",
        "adaptive: a batch waits for company only while admitted requests are still being tokenized "
        "(a lone request at idle leaves at once); always: every batch waits up to max_wait_ms unless full",
    )
    max_queue_tokens: int = setting(131072, "queued tokens allowed; a request that does not fit gets 429 at once")
    max_queue_wait_s: float = setting(
        2.0,
        "the queue also takes no more work than the backend drains in this many seconds, at the rate it measures "
        "while saturated: under overload, accepted requests are answered within about this long and the rest are "
        "refused at once; 0 = max_queue_tokens alone bounds the queue",
    )
    attention_max_batch_tokens: int = setting(4096, "max_batch_tokens for the attention graph (its output is T^2)")
    # limits
    max_inputs_per_request: int = setting(256, "most inputs in one request")
    max_request_bytes: int = setting(2 * 1024 * 1024, "largest request body (REST) / message (gRPC) in bytes")
    max_attention_values: int = setting(4_000_000, "most attention floats one answer may carry")
    request_timeout_s: float = setting(30.0, "deadline of a request that brings none of its own")
    grpc_max_message_bytes: int = setting(64 * 1024 * 1024, "largest gRPC message sent (answers with tensors)")
    # connections
    http_header_timeout_s: float = setting(
        10.0, "a REST connection that has not sent a whole request head (line and headers) by then is closed"
    )
    http_body_timeout_s: float = setting(
        30.0, "a REST connection whose request body has not all arrived this long after its head is closed"
    )
    http_keepalive_timeout_s: float = setting(5.0, "an idle REST keep-alive connection is closed after this long")
    http_send_timeout_s: float = setting(
        30.0, "a REST connection whose client reads none of a pending answer for this long is closed"
    )
    http_max_connections: int = setting(
        1000, "REST connections (or requests in progress) past which a new request gets 503 at once"
    )
    http_max_header_bytes: int = setting(16 * 1024, "largest REST request head (request line and headers) in bytes")
    grpc_max_connection_age_s: float = setting(
        300.0, "a gRPC connection is asked to reconnect (GOAWAY) after this long, so clients see new replicas"
    )
    grpc_max_connection_age_grace_s: float = setting(
        30.0, "after that GOAWAY, how long calls in progress get before the connection is closed"
    )
    # security
    api_keys: Annotated[tuple[str, ...], NoDecode] = setting(
        (), "comma-separated API keys; empty = no auth", secret=True
    )
    api_key_file: Path | None = setting(None, "file with one API key per line (a mounted Secret)")
    metrics_require_key: bool = setting(False, "require an API key for /metrics too")
    tls_cert: Path | None = setting(None, "PEM certificate (chain): serve HTTPS and gRPC over TLS (with --tls-key)")
    tls_key: Path | None = setting(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = setting(
        None, "PEM CA bundle: gRPC requires client certificates signed by it (mTLS; needs --tls-cert)"
    )
    # lifecycle and logs
    shutdown_delay_s: float = setting(
        0.0,
        "on SIGTERM, how long the server goes on serving with readiness false (503, gRPC NOT_SERVING) and REST "
        "answers closing their connections before the drain begins: set it above the time your load balancer "
        "takes to stop routing to an unready replica",
    )
    shutdown_grace_s: float = setting(20.0, "on SIGTERM, how long in-flight requests get to finish")
    recovery_probe_s: float = setting(
        10.0,
        "while readiness is false because batches keep failing, a one-sentence probe batch runs this often; "
        "the first that succeeds makes the pod ready again",
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "log level")
    # testing only
    fault_inject_text: str = setting(
        "",
        "TESTING ONLY, off when empty: the backend is wrapped so that a batch holding an input equal to this "
        "text fails in the runtime (service.backends.faults)",
    )

    @field_validator("api_keys", "model_dir", "fake_task", mode="before")
    @classmethod
    def split_lists(cls, value: Any) -> Any:
        """A repeated flag gives a list, a variable a comma-separated string: each may list several."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return tuple(part.strip() for item in value for part in str(item).split(",") if part.strip())
        return value

    @field_validator("api_key_file", "tls_cert", "tls_key", "tls_client_ca", mode="before")
    @classmethod
    def empty_path_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def check(self) -> Settings:
        validate(self)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        **_: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges flags over the environment it is given; nothing is read behind its back
        return (init_settings,)

    def secrets(self) -> set[str]:
        return set(self.api_keys) | set(read_key_file(self.api_key_file))

    def redacted(self) -> dict[str, Any]:
        shown = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if is_secret(info) and value:
                value = f"<{len(value)} redacted>"
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            shown[name] = value
        return shown


class EnvironmentSource(PydanticBaseSettingsSource):
    """The MHASERVE_* variables of a mapping (the process environment unless told otherwise)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.environ.get(env_name(field_name)), field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {name: self.get_field_value(info, name)[0] for name, info in self.settings_cls.model_fields.items()}
        return {name: value for name, value in found.items() if value is not None}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def is_secret(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


def choices_of(info: FieldInfo) -> tuple[str, ...]:
    return typing.get_args(info.annotation) if typing.get_origin(info.annotation) is Literal else ()


def read_key_file(path: Path | None) -> list[str]:
    if path is None:
        return []
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field, taking its text as given; load_settings parses it with the field's type."""
    for name, info in Settings.model_fields.items():
        default = info.default
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        shown = "<empty>" if default in ((), None, "") else default
        choices = choices_of(info)
        listed = typing.get_origin(info.annotation) is tuple
        parser.add_argument(
            flag_name(name),
            dest=name,
            metavar="|".join(choices) if choices else type_name(info),
            help=f"{info.description} [env {env_name(name)}; default {shown}]",
            default=None,
            action="append" if listed else "store",  # a list may be given flag by flag
        )


def type_name(info: FieldInfo) -> str:
    """INT, FLOAT, PATH, LIST, ...: the field's type without its None."""
    if typing.get_origin(info.annotation) is tuple:
        return "LIST"
    kinds = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
    return getattr(kinds[0], "__name__", "VALUE").upper()


def load_settings(
    cli: Mapping[str, str | list[str] | None] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags (as the strings argparse gave) over MHASERVE_* variables over defaults."""
    environ = os.environ if environ is None else environ
    known = {env_name(name) for name in Settings.model_fields}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise SettingsError(f"unknown environment variable {unknown[0]} (known: see `mhaserve serve --help`)")
    flags = {name: value for name, value in (cli or {}).items() if value is not None}
    try:
        return Settings(**{**EnvironmentSource(Settings, environ)(), **flags})
    except ValidationError as exc:
        raise SettingsError(describe(exc, flags)) from None


def describe(exc: ValidationError, flags: Mapping[str, str]) -> str:
    """pydantic's first error, named by where the value came from: its flag or its variable."""
    error = exc.errors()[0]
    if error["type"] == "value_error":  # raised by validate(): its message names the setting
        return str(error["ctx"]["error"])
    name = str(error["loc"][0]) if error["loc"] else ""
    source = flag_name(name) if name in flags else env_name(name)
    return f"{source}: {error['msg']} (got {error['input']!r})"


def validate(settings: Settings) -> None:
    positive = (
        "max_batch_tokens",
        "max_batch_size",
        "max_queue_tokens",
        "attention_max_batch_tokens",
        "max_inputs_per_request",
        "max_request_bytes",
        "max_attention_values",
        "grpc_max_message_bytes",
        "http_header_timeout_s",
        "http_body_timeout_s",
        "http_keepalive_timeout_s",
        "http_send_timeout_s",
        "recovery_probe_s",
        "http_max_connections",
        "http_max_header_bytes",
        "grpc_max_connection_age_s",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{flag_name(name)} must be positive, got {getattr(settings, name)}")
    if not 0 <= settings.max_queue_wait_s < settings.request_timeout_s:
        raise SettingsError(
            f"--max-queue-wait-s must be >= 0 and under --request-timeout-s ({settings.request_timeout_s}), "
            f"got {settings.max_queue_wait_s}"
        )
    if settings.fake_batch_ms < 0:
        raise SettingsError(f"--fake-batch-ms must be >= 0, got {settings.fake_batch_ms}")
    if settings.max_wait_ms < 0 or settings.request_timeout_s <= 0 or settings.shutdown_grace_s < 0:
        raise SettingsError("--max-wait-ms and --shutdown-grace-s must be >= 0, --request-timeout-s > 0")
    if settings.shutdown_delay_s < 0:
        raise SettingsError(f"--shutdown-delay-s must be >= 0 (0 = drain at once), got {settings.shutdown_delay_s}")
    if settings.api_key_file is not None and not Path(settings.api_key_file).is_file():
        raise SettingsError(f"--api-key-file: {settings.api_key_file} not found")
    if settings.grpc_max_connection_age_grace_s < 0:
        raise SettingsError(
            f"--grpc-max-connection-age-grace-s must be >= 0, got {settings.grpc_max_connection_age_grace_s}"
        )
    if settings.inference_workers < 0 or settings.intra_op_threads < 0:
        raise SettingsError("--inference-workers and --intra-op-threads must be >= 0 (0 = auto)")
    if not 0 <= settings.inference_nice <= 19:
        raise SettingsError(f"--inference-nice must be 0..19 (a nice value), got {settings.inference_nice}")
    validate_tls(settings)
    for port_name in ("http_port", "grpc_port"):
        if not 0 <= getattr(settings, port_name) <= 65535:
            raise SettingsError(f"{flag_name(port_name)} must be a port number, got {getattr(settings, port_name)}")


def refuse_encrypted_key() -> bytes:
    raise SettingsError("--tls-key is encrypted: give an unencrypted PEM key (e.g. from a Kubernetes TLS Secret)")


def validate_tls(settings: Settings) -> None:
    """TLS files must exist, parse, and belong together; say which one is wrong and why."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key go together: give both (TLS on) or neither (plaintext)")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(settings, name)
        if path is None:
            continue
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SettingsError(f"{flag_name(name)}: cannot read {path} ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{flag_name(name)}: {path} is not a PEM file (binary content)") from None
        if "-----BEGIN " not in text:
            raise SettingsError(f"{flag_name(name)}: {path} is not a PEM file (no -----BEGIN line)")
    if settings.tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key, password=refuse_encrypted_key)
        except ssl.SSLError as exc:
            raise SettingsError(
                f"--tls-cert {settings.tls_cert} with --tls-key {settings.tls_key}: not a certificate and its "
                f"matching private key ({exc.reason or exc})"
            ) from None
    if settings.tls_client_ca is not None:
        try:
            ssl.create_default_context(cafile=settings.tls_client_ca)
        except ssl.SSLError as exc:
            raise SettingsError(
                f"--tls-client-ca {settings.tls_client_ca}: not a PEM CA certificate ({exc.reason or exc})"
            ) from None
