from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from cloud_bridge.credentials import resolve_api_key
from cloud_bridge.errors import BridgeConfigError


def test_explicit_key_wins_and_none_means_no_key(tmp_path: Path) -> None:
    assert resolve_api_key(SecretStr("k1"), tmp_path / "nope", expert="e").get_secret_value() \
        == "k1"  # type: ignore[union-attr]
    assert resolve_api_key(None, None, expert="e") is None


def test_relative_key_file_is_found_in_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "openai.key").write_text("sk-from-systemd\n")
    key = resolve_api_key(None, Path("openai.key"), expert="e",
                          env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert key is not None and key.get_secret_value() == "sk-from-systemd"
    assert "sk-from-systemd" not in repr(key) and "sk-from-systemd" not in str(key)


def test_absolute_key_file(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_text("  sk-abs  \n")
    key = resolve_api_key(None, f, expert="e", env={})
    assert key is not None and key.get_secret_value() == "sk-abs"


@pytest.mark.parametrize("content", [None, "\n"])
def test_missing_or_empty_key_file_names_the_file(tmp_path: Path, content: str | None) -> None:
    f = tmp_path / "gpt.key"
    if content is not None:
        f.write_text(content)
    with pytest.raises(BridgeConfigError, match="gpt.key") as info:
        resolve_api_key(None, f, expert="gpt", env={})
    assert "gpt" in str(info.value)
