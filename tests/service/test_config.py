"""Settings: one object from flags and MHASERVE_* variables, documented in one place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.config import Settings, SettingsError, env_name, flag_name, load_settings
from tests.support.server import REPO


def test_flag_beats_environment_beats_default():
    assert load_settings({}, {}).max_batch_size == 64
    assert load_settings({}, {"MHASERVE_MAX_BATCH_SIZE": "8"}).max_batch_size == 8
    assert load_settings({"max_batch_size": "4"}, {"MHASERVE_MAX_BATCH_SIZE": "8"}).max_batch_size == 4


def test_lists_and_booleans_parse_from_strings():
    settings = load_settings({}, {"MHASERVE_API_KEYS": "a, b,,c", "MHASERVE_METRICS_REQUIRE_KEY": "true"})
    assert settings.api_keys == ("a", "b", "c") and settings.metrics_require_key is True


@pytest.mark.parametrize(
    ("cli", "environ", "says"),
    [
        ({"max_batch_size": "many"}, {}, "--max-batch-size: Input should be a valid integer"),
        ({}, {"MHASERVE_DEVICE": "tpu"}, "MHASERVE_DEVICE: Input should be 'auto', 'cpu' or 'cuda' \\(got 'tpu'\\)"),
        ({}, {"MHASERVE_MAX_BATCH_SIZ": "3"}, "unknown environment variable MHASERVE_MAX_BATCH_SIZ"),
        ({"max_queue_tokens": "0"}, {}, "--max-queue-tokens must be positive"),
        ({"api_key_file": "/nonexistent/keys"}, {}, "--api-key-file: /nonexistent/keys not found"),
        ({"inference_nice": "20"}, {}, "--inference-nice must be 0..19"),
        ({"inference_workers": "-1"}, {}, "--inference-workers and --intra-op-threads must be >= 0"),
    ],
)
def test_bad_settings_are_named(cli, environ, says):
    with pytest.raises(SettingsError, match=says):
        load_settings(cli, environ)


def test_redacted_settings_hide_keys(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated monthly\nfile-key\n")
    settings = load_settings({"api_key_file": str(key_file)}, {"MHASERVE_API_KEYS": "secret-one"})
    assert settings.secrets() == {"secret-one", "file-key"}
    assert "secret-one" not in str(settings.redacted())


def test_help_lists_every_setting_with_its_variable_and_default():
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in Settings.model_fields:
        assert flag_name(name) in text and env_name(name) in text


def test_settings_page_table_matches_the_settings():
    table = (REPO / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{flag_name(name)}` | `{env_name(name)}` |" in table, name


def test_invalid_setting_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--max-wait-ms", "soon"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mhaserve: error: --max-wait-ms: Input should be a valid number, "
        "unable to parse string as a number (got 'soon')"
    )
