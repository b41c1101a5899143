"""The settings' two variable sources (the environment, the env files), with one change:
a value that is not the JSON its setting needs is a :class:`ConfigError` naming the
variable, the layer it came from and the parse error, so the CLI prints one line.

pydantic-settings raises ``SettingsError: error parsing value for field "cloud_experts"
from source "EnvSettingsSource"``, which names neither the variable nor the file; a
quoting slip in a fleet file (``EDGEROUTE_CLOUD_EXPERTS=[{"name": ...}]`` unquoted,
or ``'not json'``) then ends ``edgeroute serve`` in a traceback. Each source here notes the
value it failed to decode, and turns the error into one that says where it is.

A leaf of ``agent.settings`` (which builds these sources): it imports no settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource, SettingsError

from agent.errors import ConfigError


class SettingJsonError(ConfigError):
    """A setting's variable holds a value that is not valid JSON (list, dict, section)."""


class _NotesBadJson:
    """Mixin for an env source: remember the value JSON decoding failed on, then say
    which variable held it."""

    env_vars: Any
    _failed: tuple[str, str, ValueError] | None = None

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)  # type: ignore[misc]
        except ValueError as exc:
            self._failed = (field_name, str(value), exc)
            raise

    def __call__(self) -> dict[str, Any]:
        try:
            return super().__call__()  # type: ignore[misc, no-any-return]
        except SettingsError as exc:
            if self._failed is None:
                raise
            field, value, error = self._failed
            var = self._variable(field, value)
            raise SettingJsonError(
                f"{var} ({self.layer(var)}) is not valid JSON: {error}; write the value as "
                f"JSON (in an env file inside single quotes, {var}='...')") from exc

    def _variable(self, field: str, value: str) -> str:
        """The variable (as written, upper case) that holds ``value`` for ``field``."""
        field = field.lower()
        for name, held in self.env_vars.items():
            key = str(name).lower()
            if held == value and (key.endswith("__" + field) or key.endswith("_" + field)):
                return key.upper()
        return field.upper()

    def layer(self, var: str) -> str:
        raise NotImplementedError


class JsonCheckedEnvSource(_NotesBadJson, EnvSettingsSource):
    """The process environment."""

    def layer(self, var: str) -> str:
        return "the environment"


class JsonCheckedDotEnvSource(_NotesBadJson, DotEnvSettingsSource):
    """The env files, later ones winning; the layer named is the file the value is in."""

    def __init__(self, settings_cls: Any, env_files: Sequence[Path]) -> None:
        super().__init__(settings_cls, env_file=list(env_files) or None)
        self._files = list(env_files)

    def layer(self, var: str) -> str:
        for path in reversed(self._files):  # the last file that sets it is the one read
            values = self._static_read_env_file(path, case_sensitive=False)
            if var.lower() in values:
                return f"env file {path}"
        return "an env file"
