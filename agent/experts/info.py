"""What an expert is without calling it: one :class:`ExpertInfo` per configured expert,
built from its settings section here and nowhere else.

The one description from settings to the policy: the router resolves each expert's ability
profile from it (``agent.profiles.resolve``), the decider builds the policy's frozen view
(``agent.policy.ExpertState``) from it, and a running expert carries it (``Expert.info``),
so ``edgeroute route`` (settings only) and the daemon (models loaded) describe an expert
alike. The bridge's ``Endpoint`` is the cloud client's own call configuration and holds
the same ``Prices`` object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agent import __version__
from agent.expert_settings import CloudExpertSettings, LocalExpertSettings
from cloud_bridge.messages import Modality
from cloud_bridge.usage import Prices

if TYPE_CHECKING:
    from agent.settings import Settings

__all__ = ["ExpertInfo", "ExpertKind", "cloud_info", "cloud_prices", "describe_experts",
           "local_info", "local_tools"]
ExpertKind = Literal["local", "cloud"]
# llama-cpp-python chat formats that turn `tools` into function calls.
FUNCTION_CALLING_FORMATS = frozenset({"chatml-function-calling", "functionary",
                                      "functionary-v1", "functionary-v2"})


@dataclass(frozen=True)
class ExpertInfo:
    """What the router and the policy know about an expert without calling it. Prices
    live here once (a cloud expert's bridge endpoint holds the same object)."""

    name: str
    kind: ExpertKind
    model: str  # as configured: a GGUF path, builtin: or hf: reference; a cloud model id
    profile: str | None = None  # the ability profile its setting pins; None: resolved
    prices: Prices = field(default_factory=Prices)
    fallback_to_local: bool = True  # may the first local expert answer when this one fails
    extra: dict[str, Any] = field(default_factory=dict)
    # Capabilities, hard constraints in the policy (simonw/llm's ``can_stream`` idea).
    context_tokens: int | None = None  # prompt + max_tokens must fit; None: unknown, no check
    tools: bool = False  # answers requests with ``tools``
    json_mode: bool = False  # honours ``response_format``
    modalities: frozenset[Modality] = frozenset()  # media it reads besides text
    # Calls it serves at once, which admission lets in (a local model: its batch slots;
    # a cloud expert: the server's ``max_inflight_cloud`` instead).
    concurrency: int = 1

    @property
    def fingerprint(self) -> str:
        """OpenAI's ``system_fingerprint``: names the configuration an answer came from
        (expert, model, daemon version), so a client comparing seeded answers sees when
        it changed. A string: the published schema has no null for it."""
        key = f"{__version__}\0{self.kind}\0{self.name}\0{self.model}".encode()
        return "fp_" + hashlib.sha256(key).hexdigest()[:12]



def local_tools(settings: LocalExpertSettings) -> bool:
    """Whether a local expert declares tools: as set, else only with a chat format that
    does function calling (a GGUF's own template ignores ``tools``)."""
    if settings.tools is not None:
        return settings.tools
    return settings.chat_format in FUNCTION_CALLING_FORMATS


def local_info(settings: LocalExpertSettings, *, extra: dict[str, Any] | None = None,
               concurrency: int = 1) -> ExpertInfo:
    """A local expert: its settings, and once its model is loaded what loading found
    (``extra``: the file, threads, batch slots; ``concurrency``: the slots)."""
    return ExpertInfo(name=settings.name, kind="local", model=settings.model,
                      profile=settings.profile, extra=extra or {},
                      context_tokens=settings.n_ctx, tools=local_tools(settings),
                      json_mode=settings.json_mode, concurrency=concurrency)


def cloud_prices(cfg: CloudExpertSettings) -> Prices:
    return Prices(cfg.input_usd_per_mtok, cfg.output_usd_per_mtok,
                  cfg.cached_input_usd_per_mtok)


def cloud_info(cfg: CloudExpertSettings, prices: Prices | None = None) -> ExpertInfo:
    """A cloud expert, without calling it or reading its key (``prices``: the bridge
    endpoint's object, so both hold the same one)."""
    return ExpertInfo(
        name=cfg.name,
        kind="cloud",
        model=cfg.model,
        profile=cfg.profile,
        prices=prices or cloud_prices(cfg),
        fallback_to_local=cfg.fallback_to_local,
        extra={"base_url": cfg.base_url, "streaming": cfg.streaming},
        context_tokens=cfg.context_tokens,
        tools=cfg.tools,
        json_mode=cfg.json_mode,
        modalities=frozenset(cfg.modalities),
    )


def describe_experts(settings: Settings) -> dict[str, ExpertInfo]:
    """Every configured expert by name, local ones first (the order ``default_expert``
    and the fixed router follow)."""
    out = {cfg.name: local_info(cfg) for cfg in settings.local_experts}
    out |= {cfg.name: cloud_info(cfg) for cfg in settings.cloud_experts}
    return out
