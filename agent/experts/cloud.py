"""A cloud expert: an OpenAI-compatible endpoint reached through ``cloud_bridge``.

The bridge's answers (``ChatResult``, ``StreamPiece``, ``TokenUsage``) are the daemon's
own types, so this adapter only translates errors: any bridge failure becomes
:class:`CloudCallError`, an ``ExpertCallError`` carrying whether bytes had already reached
the caller (``partial``), the usage consumed so far (billed even then) and, for an open
breaker, when to retry. Whether the daemon then falls back to the local expert or answers
503 is decided in one place, ``agent.dispatch``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import NoReturn

from agent.errors import ConfigError, ExpertCallError
from agent.expert_settings import CloudExpertSettings
from agent.experts.base import Message
from agent.experts.info import ExpertInfo, cloud_info, cloud_prices
from agent.settings import Settings
from cloud_bridge.breaker import BreakerPolicy
from cloud_bridge.client import BridgeClient, Endpoint
from cloud_bridge.credentials import resolve_api_key
from cloud_bridge.errors import BridgeConfigError, BridgeError, CallError, CircuitOpenError
from cloud_bridge.retry import RetryPolicy
from cloud_bridge.timeouts import Timeouts
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece


class CloudCallError(ExpertCallError):
    """A cloud call failed (``usage`` and ``retry_after_s`` as on ExpertCallError)."""


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
        prices=cloud_prices(cfg),
        timeouts=Timeouts(
            connect_s=cfg.connect_timeout_s,
            first_token_s=cfg.first_token_timeout_s,
            read_s=cfg.read_timeout_s,
            first_byte_s=cfg.first_byte_timeout_s,
            deadline_s=cfg.deadline_s,
        ),
        retry=RetryPolicy(cfg.max_retries, cfg.retry_backoff_base_s, cfg.retry_backoff_cap_s),
        breaker=BreakerPolicy(
            cfg.breaker_failure_threshold, cfg.breaker_cooldown_s, cfg.breaker_max_cooldown_s
        ),
        streams=cfg.streaming,
        developer_role=cfg.developer_role,
    )


class CloudExpert:
    """One cloud expert. Build with :meth:`from_settings`."""

    def __init__(self, info: ExpertInfo, client: BridgeClient) -> None:
        self.info = info
        self.client = client

    @classmethod
    def from_settings(cls, cfg: CloudExpertSettings, settings: Settings) -> CloudExpert:
        """Raises ConfigError (one line at start-up) for an unreadable key file."""
        endpoint = endpoint_from_settings(cfg)
        return cls(cloud_info(cfg, endpoint.prices), BridgeClient(endpoint))

    def __repr__(self) -> str:
        return f"CloudExpert({self.client!r})"

    def available(self) -> bool:
        """False while the circuit breaker is open: the call would be refused at once."""
        return self.client.breaker.state != "open"

    def _fail(self, exc: BridgeError) -> NoReturn:
        """The one place bridge errors become the daemon's."""
        if isinstance(exc, CallError):
            raise CloudCallError(self.info.name, exc.detail, partial=exc.partial,
                                 usage=exc.usage) from exc
        retry = exc.retry_in_s if isinstance(exc, CircuitOpenError) else None
        raise CloudCallError(self.info.name, str(exc),
                             retry_after_s=max(math.ceil(retry), 1) if retry is not None
                             else None) from exc

    async def complete(self, messages: list[Message], params: SamplingParams) -> ChatResult:
        try:
            return await self.client.complete(messages, params)
        except BridgeError as exc:
            self._fail(exc)

    async def stream(
        self, messages: list[Message], params: SamplingParams
    ) -> AsyncIterator[StreamPiece]:
        try:
            async for piece in self.client.stream(messages, params):
                yield piece
        except BridgeError as exc:
            self._fail(exc)

    async def aclose(self) -> None:
        await self.client.aclose()
