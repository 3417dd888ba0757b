"""The image's HEALTHCHECK: exit 0 when this container's server answers /health/ready with 200.

Docker and Compose use it (`depends_on: condition: service_healthy`); Kubernetes ignores it
and runs the Deployment's probes. It reads the same MHASERVE_* settings as the server, so a
changed port or bind address is followed (settings given as flags to `mhaserve serve` are
not visible here: configure a container through the environment).
"""

from __future__ import annotations

import sys
import urllib.request

from service.config import load_settings

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def ready_url() -> str:
    settings = load_settings(cli={})
    host = "127.0.0.1" if settings.host in WILDCARD_HOSTS else settings.host
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{settings.http_port}/health/ready"


def main() -> int:
    url = ready_url()
    try:
        # shorter than the HEALTHCHECK's --timeout, so we report instead of being killed
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status such as 503
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
