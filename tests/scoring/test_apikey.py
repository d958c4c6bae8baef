from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from megatron_detox.errors import UserError
from megatron_detox.scoring.apikey import ENV_VAR, ApiKey, Redactor, load_api_key

KEY = "AIzaSy-test-SECRET-0123456789"


def test_key_from_env_and_file(tmp_path: Path) -> None:
    assert load_api_key(environ={ENV_VAR: f" {KEY}\n"}).reveal() == KEY  # type: ignore[union-attr]
    assert load_api_key(environ={}) is None
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert load_api_key(key_file, environ={ENV_VAR: "other"}).reveal() == KEY  # type: ignore[union-attr]


def test_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_api_key(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        load_api_key(tmp_path / "empty")


def test_key_never_shows() -> None:
    key = ApiKey(KEY)
    assert KEY not in repr(key) and KEY not in str(key) and KEY not in f"{key}"
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_redactor_scrubs_key_and_url_params() -> None:
    redact = Redactor(ApiKey(KEY))
    text = f"HTTPSConnectionPool: /v1alpha1/comments:analyze?key={KEY}&x=1 failed; header {KEY}"
    scrubbed = redact(text)
    assert KEY not in scrubbed
    assert "?key=<redacted>&x=1" in scrubbed
    assert Redactor()("GET /a?key=abc") == "GET /a?key=<redacted>"
