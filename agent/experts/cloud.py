"""A cloud expert: an OpenAI-compatible endpoint reached through ``cloud_bridge``.

This is the adapter between the bridge's vocabulary (``ChatResult``, ``StreamPiece``,
``BridgeError``) and the daemon's (``Completion``, ``Delta``, ``ExpertCallError``). Any
bridge failure becomes :class:`CloudCallError`, an ``ExpertCallError`` the runtime
answers by falling back to the local expert (before the first byte), unless the expert's
``fallback_to_local`` is off: then a failure before the first byte is
``ExpertUnavailableError`` (HTTP 503). A failure after the first delta is always a
``CloudCallError`` with ``partial=True`` and the usage consumed so far, so it is billed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import NoReturn

from agent.errors import ConfigError, ExpertCallError, ExpertUnavailableError
from agent.experts.base import (
    Completion,
    Delta,
    ExpertInfo,
    GenerationParams,
    Message,
    Usage,
)
from agent.settings import CloudExpertSettings, Settings
from cloud_bridge.breaker import BreakerPolicy
from cloud_bridge.client import BridgeClient, Endpoint
from cloud_bridge.credentials import resolve_api_key
from cloud_bridge.errors import BridgeConfigError, BridgeError, CallError, CircuitOpenError
from cloud_bridge.retry import RetryPolicy
from cloud_bridge.timeouts import Timeouts
from cloud_bridge.usage import Prices, TokenUsage
from cloud_bridge.wire import SamplingParams


class CloudCallError(ExpertCallError):
    """A cloud call failed. ``usage``: tokens consumed before the failure (None if none)."""

    def __init__(
        self, expert: str, reason: str, *, partial: bool = False, usage: Usage | None = None
    ) -> None:
        super().__init__(expert, reason, partial=partial)
        self.usage = usage


def endpoint_from_settings(cfg: CloudExpertSettings) -> Endpoint:
    """The bridge's view of one configured expert; reads the key file once, here."""
    try:
        key = resolve_api_key(cfg.api_key, cfg.api_key_file, expert=cfg.name)
    except BridgeConfigError as exc:
        raise ConfigError(str(exc)) from exc
    return Endpoint(
        name=cfg.name,
        base_url=cfg.base_url,
        model=cfg.model,
        api_key=key,
        prices=Prices(cfg.input_usd_per_mtok, cfg.output_usd_per_mtok),
        timeouts=Timeouts(
            connect_s=cfg.connect_timeout_s,
            read_s=cfg.read_timeout_s,
            first_byte_s=cfg.first_byte_timeout_s,
            deadline_s=cfg.deadline_s,
        ),
        retry=RetryPolicy(cfg.max_retries, cfg.retry_backoff_base_s, cfg.retry_backoff_cap_s),
        breaker=BreakerPolicy(
            cfg.breaker_failure_threshold, cfg.breaker_cooldown_s, cfg.breaker_max_cooldown_s
        ),
    )


def _usage(u: TokenUsage | None) -> Usage | None:
    return None if u is None else Usage(u.prompt_tokens, u.completion_tokens)


def _sampling(params: GenerationParams) -> SamplingParams:
    return SamplingParams(params.max_tokens, params.temperature, params.top_p, params.stop,
                          params.seed)


class CloudExpert:
    """One cloud expert. Build with :meth:`from_settings`."""

    def __init__(self, info: ExpertInfo, client: BridgeClient, *, fallback_to_local: bool) -> None:
        self.info = info
        self.client = client
        self.fallback_to_local = fallback_to_local

    @classmethod
    def from_settings(cls, cfg: CloudExpertSettings, settings: Settings) -> CloudExpert:
        """Raises ConfigError (one line at start-up) for an unreadable key file."""
        endpoint = endpoint_from_settings(cfg)
        info = ExpertInfo(
            name=cfg.name,
            kind="cloud",
            model=cfg.model,
            input_usd_per_mtok=cfg.input_usd_per_mtok,
            output_usd_per_mtok=cfg.output_usd_per_mtok,
            extra={"base_url": cfg.base_url, "fallback_to_local": cfg.fallback_to_local},
        )
        return cls(info, BridgeClient(endpoint), fallback_to_local=cfg.fallback_to_local)

    def __repr__(self) -> str:
        return f"CloudExpert({self.client!r})"

    def available(self) -> bool:
        """False while the circuit breaker is open, so the policy routes elsewhere; always
        True with fallback_to_local off, so the call fails as configured (HTTP 503)."""
        return not self.fallback_to_local or self.client.breaker.state != "open"

    def _fail(self, exc: BridgeError) -> NoReturn:
        """The one place bridge errors become the daemon's."""
        partial = isinstance(exc, CallError) and exc.partial
        usage = _usage(exc.usage) if isinstance(exc, CallError) else None
        if not partial and not self.fallback_to_local:
            retry = exc.retry_in_s if isinstance(exc, CircuitOpenError) else None
            raise ExpertUnavailableError(
                f"cloud expert {self.info.name!r} failed and fallback_to_local is off: {exc}",
                retry_after_s=math.ceil(retry) if retry else None,
            ) from exc
        reason = exc.detail if isinstance(exc, CallError) else str(exc)
        raise CloudCallError(self.info.name, reason, partial=partial, usage=usage) from exc

    async def complete(self, messages: list[Message], params: GenerationParams) -> Completion:
        try:
            result = await self.client.complete(messages, _sampling(params))
        except BridgeError as exc:
            self._fail(exc)
        usage = _usage(result.usage)
        assert usage is not None
        return Completion(result.content, result.finish_reason, usage)

    async def stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        try:
            async for piece in self.client.stream(messages, _sampling(params)):
                yield Delta(piece.content, piece.finish_reason, _usage(piece.usage))
        except BridgeError as exc:
            self._fail(exc)

    async def aclose(self) -> None:
        await self.client.aclose()
