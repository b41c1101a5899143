"""Where an expert's API key comes from: a SecretStr in settings, a key file, or a
systemd credential (``LoadCredential=`` puts files under ``$CREDENTIALS_DIRECTORY``).

The key stays a ``SecretStr`` until the moment a request header is built, so settings
dumps, reprs and log lines show ``**********``. Messages here name the file, never the
key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from cloud_bridge.errors import BridgeConfigError

CREDENTIALS_DIR_VAR = "CREDENTIALS_DIRECTORY"


def key_file_path(api_key_file: Path, env: Mapping[str, str]) -> Path:
    """A relative name is looked up in $CREDENTIALS_DIRECTORY first, then as given."""
    if not api_key_file.is_absolute():
        cred_dir = env.get(CREDENTIALS_DIR_VAR)
        if cred_dir:
            candidate = Path(cred_dir) / api_key_file
            if candidate.is_file():
                return candidate
    return api_key_file


def resolve_api_key(
    api_key: SecretStr | None,
    api_key_file: Path | None,
    *,
    expert: str,
    env: Mapping[str, str] | None = None,
) -> SecretStr | None:
    """The key to send, or None for endpoints that need none (a local vLLM, Ollama).

    An explicit ``api_key`` wins over ``api_key_file``. The file's surrounding whitespace
    is stripped (editors add a trailing newline).
    """
    if api_key is not None:
        return api_key
    if api_key_file is None:
        return None
    path = key_file_path(api_key_file, os.environ if env is None else env)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BridgeConfigError(
            f"expert {expert!r}: cannot read api_key_file {str(path)!r} ({exc.strerror}); "
            f"create it (chmod 600) or set {CREDENTIALS_DIR_VAR} to the directory holding it"
        ) from exc
    if not text:
        raise BridgeConfigError(
            f"expert {expert!r}: api_key_file {str(path)!r} is empty; write the key into it"
        )
    return SecretStr(text)
