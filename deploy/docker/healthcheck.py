"""The image's HEALTHCHECK: exit 0 when this container's server answers /health/ready with 200.

Docker and Compose use it (`depends_on: condition: service_healthy`); Kubernetes ignores it
and runs the Deployment's probes. It asks the way the server listens, from the settings the
server reads (service.config.load_settings): the MHASERVE_* environment, which `docker exec`
shares with the server, and the flags the server was started with (`docker run IMAGE
--http-port 9000`), read from its command line. So the address, the port, TLS on or off and
the API key follow the server's:

- TLS (tls_cert and tls_key set): HTTPS, trusting exactly the server's own certificate (it
  need not name 127.0.0.1, and a CA-signed one needs no CA bundle here);
- API keys: the request carries one (`Authorization: Bearer`), so a readiness route behind
  the keys answers as well as an open one.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from pathlib import Path

from service.config import load_settings

WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
# the settings that decide where and how to ask
FLAGS = ("host", "http_port", "tls_cert", "tls_key", "api_keys", "api_key_file")


def serve_words(argv: list[str]) -> list[str] | None:
    """The words after `serve` of a `mhaserve serve` / `python -m service serve` command line;
    None for any other command."""
    names = [os.path.basename(arg) for arg in argv[:2]]
    if "mhaserve" in names:
        rest = argv[names.index("mhaserve") + 1 :]
    elif argv[1:3] == ["-m", "service"]:
        rest = argv[3:]
    else:
        return None
    return rest[1:] if rest and rest[0] == "serve" else None


def serve_flags(argv: list[str]) -> dict[str, str]:
    """The FLAGS a server command line gives, as load_settings(cli=...) takes them (field name ->
    the flag's text, `--http-port 9000` or `--http-port=9000`); {} for any other command."""
    wanted = {"--" + name.replace("_", "-"): name for name in FLAGS}
    words = serve_words(argv) or []
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        flag, equals, value = word.partition("=")
        if flag not in wanted:
            continue
        if equals:
            found[wanted[flag]] = value
        elif i + 1 < len(words):
            found[wanted[flag]] = words[i + 1]
    return found


def server_argv() -> list[str]:
    """The command line of this container's server: PID 1 (the ENTRYPOINT), or a child of it
    (`docker run --init`). [] where neither is one (outside a container)."""
    pids = ["1"]
    for children in Path("/proc/1/task").glob("*/children"):
        try:
            pids += children.read_text().split()
        except OSError:
            continue
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue
        if serve_words(argv) is not None:
            return argv
    return []


def ready_request() -> tuple[urllib.request.Request, ssl.SSLContext | None]:
    settings = load_settings(cli=serve_flags(server_argv()))
    host = WILDCARD_HOSTS.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    context = None
    scheme = "http"
    if settings.tls_cert is not None and settings.tls_key is not None:
        scheme = "https"
        context = ssl.create_default_context(cafile=str(settings.tls_cert))
        context.check_hostname = False  # asked by address; the certificate itself is pinned
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf as its own trust anchor
    request = urllib.request.Request(f"{scheme}://{host}:{settings.http_port}/health/ready")
    keys = sorted(settings.secrets())
    if keys:
        request.add_header("Authorization", f"Bearer {keys[0]}")
    return request, context


def main() -> int:
    try:
        request, context = ready_request()
    except (ValueError, OSError) as exc:  # settings the server would refuse too
        print(f"not ready: settings: {exc}", file=sys.stderr)
        return 1
    try:
        # shorter than the HEALTHCHECK's --timeout, so we report instead of being killed
        with urllib.request.urlopen(request, timeout=4, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # refused, timed out, a TLS failure, or an HTTP error status such as 503
        print(f"not ready: {request.full_url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
