"""Property-based fuzzing of the cross-encoder routes from /openapi.json (schemathesis), on a
real `--backend fake` server whose default model is a reranker, with a classifier beside it."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx

from tests.support.server import launch


def test_rerank_routes_survive_schemathesis_and_answer_per_their_schema(tmp_path):
    server = launch("--fake-task", "rerank,classify", "--max-inputs-per-request", "16", model_dir=None)
    try:
        config = tmp_path / "schemathesis.toml"
        # 504 is the explicit answer to a deadline the client chose (timeout_s: 5e-324): no server error
        config.write_text('[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "504"]\n')
        command = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
            server.url + "/openapi.json", "--include-path-regex", "^/(rerank|v1/rerank|predict)$",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--workers", "1",
            "--seed", "20261202", "--request-timeout", "30", "--suppress-health-check", "all", "--no-color",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
        assert selected is not None and selected.group(1) == selected.group(3) == "3", output[-2000:]
        assert httpx.get(server.url + "/health/ready").status_code == 200
    finally:
        server.stop()
