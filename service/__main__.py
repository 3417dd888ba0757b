"""mhaserve serve: REST and gRPC in one process. Every flag is also an MHASERVE_* variable."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from artifact.manifest import ArtifactError
from service.config import SettingsError, add_arguments, load_settings
from service.errors import MhaserveError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mhaserve", description="Serve a multi-head-attention encoder.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve REST and gRPC",
        description="Serve REST (FastAPI) and gRPC in one process. Flags override MHASERVE_* variables.",
    )
    add_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_settings(cli)
    except SettingsError as exc:
        print(f"mhaserve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("mhaserve").info("settings: %s", json.dumps(settings.redacted()))
    from service.app import serve  # after logging is configured

    try:
        asyncio.run(serve(settings))
    except (MhaserveError, ArtifactError) as exc:  # expected failures: one line, no traceback
        logging.getLogger("mhaserve").error("%s", exc)
        return 2
    except OSError as exc:
        logging.getLogger("mhaserve").error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
