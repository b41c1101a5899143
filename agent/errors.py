"""The daemon's error tree. Every error a user can see says what to do next.

    AgentError
    ├── ConfigError            bad settings or files at start-up (CLI: one line, exit 2)
    │   ├── ModelFileError     a GGUF is missing, unreadable or fails its sha256
    │   │   └── NotInHubCacheError  an hf: file not downloaded yet (offline: fatal)
    │   ├── BundleError        a router bundle is missing, tampered or mismatched
    │   └── LedgerConfigError  the fleet ledger's URL, device id, driver or schema is wrong
    ├── LedgerUnavailableError the fleet database cannot be reached now (the request path
    │                          spends the device's lease instead; the CLI prints it)
    ├── RequestError           a client's request is wrong (HTTP 4xx, OpenAI error body)
    │   └── UnknownExpertError `model` names no configured expert (HTTP 404)
    ├── ExpertCallError        one expert failed a call (the daemon may fall back)
    └── ExpertUnavailableError no expert could answer (HTTP 503)

HTTP errors leave the server as OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud_bridge.usage import TokenUsage


class AgentError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(AgentError):
    """Settings or files that make the daemon unable to start."""


class ModelFileError(ConfigError):
    """A model file is missing, unreadable or does not match its pinned hash."""


class NotInHubCacheError(ModelFileError):
    """An ``hf:`` model file is not in the Hugging Face cache and may not be downloaded."""


class BundleError(ConfigError):
    """A router bundle is missing, tampered with, or does not match the experts."""


class LedgerConfigError(ConfigError):
    """The fleet ledger cannot be used as configured (bad URL, no driver, a newer schema)."""


class LedgerUnavailableError(AgentError):
    """The fleet database did not answer in time, or refused the connection."""


class RequestError(AgentError):
    """A bad request, reported as HTTP 4xx with an OpenAI-style body."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        if status_code is not None:
            self.status_code = status_code

    def body(self) -> dict[str, Any]:
        return openai_error_body(self.message, self.error_type, self.param, self.code)


class UnknownExpertError(RequestError):
    status_code = 404

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"model {name!r} is not a configured expert; use 'auto' or one of "
            f"{[k for k in known if k != 'auto']}",
            param="model",
            code="model_not_found",
        )


class ExpertCallError(AgentError):
    """An expert failed to answer one call; ``partial`` is True once bytes reached the
    client. ``usage``: tokens consumed before the failure, billed (None if none);
    ``retry_after_s``: when the expert may take calls again, if known."""

    def __init__(
        self, expert: str, reason: str, *, partial: bool = False,
        usage: TokenUsage | None = None, retry_after_s: int | None = None,
    ) -> None:
        super().__init__(f"expert {expert!r} failed: {reason}")
        self.expert = expert
        self.reason = reason
        self.partial = partial
        self.usage = usage
        self.retry_after_s = retry_after_s


class ExpertUnavailableError(AgentError):
    """No expert could answer: every candidate failed or is over a limit."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


def openai_error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
