"""Settings: the one configuration object, from CLI flags and MHASERVE_* environment variables.

Each field is declared once, with its help text; the CLI (`mhaserve serve --help`), the
environment variable names, the README table and the Kubernetes ConfigMap check all come
from this list. Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "MHASERVE_"
DEFAULT_MODEL_DIR = "artifacts/all-minilm-l6-v2"


def setting(default: Any, help: str, *, secret: bool = False, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "secret": secret, "choices": choices})


@dataclass(frozen=True, kw_only=True)
class Settings:
    # where and what
    model_dir: Path = setting(Path(DEFAULT_MODEL_DIR), "exported model directory (manifest.json, graphs, tokenizer)")
    host: str = setting("0.0.0.0", "address both servers bind")
    http_port: int = setting(8000, "REST port (FastAPI; also KServe v2 REST, /metrics, /ui)")
    grpc_port: int = setting(50051, "gRPC port (mhaserve.v1.Encoder, KServe v2, health, reflection)")
    device: str = setting("auto", "auto: CUDA when a GPU is usable, else CPU", choices=("auto", "cpu", "cuda"))
    precision: str = setting(
        "auto", "graph precision; auto: fp16 on CUDA, fp32 on CPU", choices=("auto", "fp32", "fp16", "int8")
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
    batch_wait: str = setting(
        "adaptive",
        "adaptive: a batch waits for company only while admitted requests are still being tokenized "
        "(a lone request at idle leaves at once); always: every batch waits up to max_wait_ms unless full",
        choices=("adaptive", "always"),
    )
    max_queue_tokens: int = setting(131072, "queued tokens allowed; a request that does not fit gets 429 at once")
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
    api_keys: tuple[str, ...] = setting((), "comma-separated API keys; empty = no auth", secret=True)
    api_key_file: Path | None = setting(None, "file with one API key per line (a mounted Secret)")
    metrics_require_key: bool = setting(False, "require an API key for /metrics too")
    tls_cert: Path | None = setting(None, "PEM certificate (chain): serve HTTPS and gRPC over TLS (with --tls-key)")
    tls_key: Path | None = setting(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = setting(
        None, "PEM CA bundle: gRPC requires client certificates signed by it (mTLS; needs --tls-cert)"
    )
    # lifecycle and logs
    shutdown_grace_s: float = setting(20.0, "on SIGTERM, how long in-flight requests get to finish")
    recovery_probe_s: float = setting(
        10.0,
        "while readiness is false because batches keep failing, a one-sentence probe batch runs this often; "
        "the first that succeeds makes the pod ready again",
    )
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"))
    # testing only
    fault_inject_text: str = setting(
        "", "TESTING ONLY, off when empty: a batch holding an input equal to this text fails in the runtime"
    )

    def secrets(self) -> set[str]:
        return set(self.api_keys) | set(read_key_file(self.api_key_file))

    def redacted(self) -> dict[str, Any]:
        shown = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = f"<{len(value)} redacted>"
            shown[f.name] = str(value) if isinstance(value, Path) else value
        return shown


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def read_key_file(path: Path | None) -> list[str]:
    if path is None:
        return []
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]


def _field_type(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = _field_type(f)
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind.startswith("Path"):
        return Path(raw) if raw else None
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = "<empty>" if default in ((), None) else default
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default {shown}]"
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            metavar=_field_type(f).split("|")[0].split("[")[0].strip().upper(),
            help=help_text,
            default=None,
        )


class SettingsError(ValueError):
    pass


def load_settings(cli: dict[str, str | None] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Flags (already parsed to strings) over MHASERVE_* variables over defaults."""
    environ = os.environ if environ is None else environ
    cli = cli or {}
    values: dict[str, Any] = {}
    known_env = {env_name(f.name) for f in dataclasses.fields(Settings)}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known_env)
    if unknown:
        raise SettingsError(f"unknown environment variable {unknown[0]} (known: see `mhaserve serve --help`)")
    for f in dataclasses.fields(Settings):
        raw, source = cli.get(f.name), flag_name(f.name)
        if raw is None:
            raw, source = environ.get(env_name(f.name)), env_name(f.name)
        if raw is None:
            continue
        try:
            value = _parse(f, raw)
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc}") from None
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise SettingsError(f"{source}: {value!r} is not one of {', '.join(choices)}")
        values[f.name] = value
    settings = Settings(**values)
    validate(settings)
    return settings


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
    if settings.max_wait_ms < 0 or settings.request_timeout_s <= 0 or settings.shutdown_grace_s < 0:
        raise SettingsError("--max-wait-ms and --shutdown-grace-s must be >= 0, --request-timeout-s > 0")
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
