"""The server process the tests drive: the bench's launcher (the tool never imports the tests)."""

from bench.server import ARTIFACT, REPO, ServerProcess, launch

__all__ = ["ARTIFACT", "REPO", "ServerProcess", "launch"]
