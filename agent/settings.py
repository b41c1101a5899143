"""One settings tree for the daemon, the CLI and the offline pipeline.

Sources, later wins: defaults < fleet env file < device env file < process environment
< explicit init kwargs (the CLI's flags). Env prefix ``EDGEROUTE_``, nested delimiter
``__`` (``EDGEROUTE_SERVER__PORT=2346``). The env files are named by
``EDGEROUTE_ENV_FILES`` (a ``:``-separated list, missing files skipped) and default to
``/etc/edgeroute/fleet.env`` then ``/etc/edgeroute/device.env`` then the user config dir's
``edgeroute.env``. Every field carries a description: it is the CLI help, the
``config show`` annotation and the generated example env file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.expert_settings import CloudExpertSettings, LocalExpertSettings
from agent.model_refs import QWEN_DEFAULT, SMOLLM2_DEFAULT
from agent.outcomes_settings import OutcomesSettings
from agent.settings_section import Section

APP_NAME = "edgeroute"
ENV_PREFIX = "EDGEROUTE_"
ENV_FILES_VAR = "EDGEROUTE_ENV_FILES"
DEFAULT_PORT = 2345
# Chosen on the validation split of the committed table (README, artifacts/report/route/):
# the largest value at which at most half of the queries go to GPT-4-1106 ($10 / $30) when it
# is the one cloud expert beside the two default local experts, every answer priced as the
# daemon prices it (its expected length); calibrate's sweep gave 0.00501.
DEFAULT_USD_PER_CORRECT = 0.005
# The cascade's band and threshold, chosen on the validation split of the committed table
# (`edgeroute calibrate --policy cascade`; artifacts/report/cascade/summary.md).
DEFAULT_CASCADE_BAND = 0.1
DEFAULT_CASCADE_THRESHOLD = -0.0994
# `edgeroute calibrate --policy local` on the shipped router's validation split (pooled
# table): no margin beat staying on Qwen there, ties go to the largest candidate
# (artifacts/report/irt/summary.md, local_margin.json).
DEFAULT_LOCAL_MARGIN = 0.1
# How much of each routed query the decision log keeps with server.dashboard_prompts on.
DASHBOARD_PROMPT_CHARS = 500



def default_env_files() -> list[Path]:
    """The layered env files: fleet first, then device, then the user's own; later wins."""
    raw = os.environ.get(ENV_FILES_VAR)
    if raw is not None:
        return [Path(p) for p in raw.split(os.pathsep) if p.strip()]
    return [
        Path("/etc/edgeroute/fleet.env"),
        Path("/etc/edgeroute/device.env"),
        Path(platformdirs.user_config_dir(APP_NAME)) / "edgeroute.env",
    ]




class PathsSettings(Section):
    """Where the daemon keeps its files (platformdirs defaults, each overridable)."""

    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)),
        description="Persistent state: spend ledger, collected tables.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir(APP_NAME)),
        description="Rebuildable files: the assembled default GGUF models.",
    )
    config_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_config_dir(APP_NAME)),
        description="User configuration (edgeroute.env lives here).",
    )


class ServerSettings(Section):
    """The localhost REST server."""

    host: str = Field("127.0.0.1", description="Bind address. Loopback by default.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="TCP port (0 picks a free one).")
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Largest request body accepted; larger is HTTP 413."
    )
    max_messages: int = Field(
        256, ge=1, description="Most chat messages accepted in one request (HTTP 400 above)."
    )
    max_message_chars: int = Field(
        200_000, ge=1, le=200_000,
        description="Longest message content in characters (HTTP 400 above); in /openapi.json. "
                    "A message sent as content parts: its text parts joined.",
    )
    max_content_parts: int = Field(
        64, ge=1, le=1024,
        description="Most content parts in one message (HTTP 400 above); in /openapi.json.",
    )
    max_tokens_cap: int = Field(
        4096, ge=1, description="Hard ceiling for a request's max_tokens (HTTP 400 above)."
    )
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens used when a request gives none."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the daemon."
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description=(
            "Host header names accepted (any port), against DNS rebinding. Add the "
            "device's name when binding beyond loopback. '*' disables the check."
        ),
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed by CORS (none: CORS off)."
    )
    api_token_file: Path | None = Field(
        None,
        description=(
            "File holding a bearer token every request must send (except /health); a "
            "relative name is looked up in $CREDENTIALS_DIRECTORY first. Required to bind "
            "beyond loopback."
        ),
    )
    max_queue_per_expert: int = Field(
        32, ge=0,
        description=(
            "Requests that may wait for a busy expert (per expert; a fallback waits in the "
            "local expert's queue); more are HTTP 503 with Retry-After at once."
        ),
    )
    queue_timeout_s: float = Field(
        30.0, gt=0,
        description="Longest wait in an expert's queue; then HTTP 503 with Retry-After.",
    )
    max_inflight_cloud: int = Field(
        8, ge=1, description="Concurrent calls per cloud expert (a local model runs one)."
    )
    dashboard_prompts: bool = Field(
        False,
        description=(
            f"Keep the first {DASHBOARD_PROMPT_CHARS} characters of each routed query (its "
            "last user message) with the recent decisions, in memory only, and show them on "
            "the dashboard (GET /, GET /v1/dashboard). Off: no prompt text is kept anywhere."
        ),
    )


class RouterSettings(Section):
    """The query router: an exported ONNX bundle, or a fixed default expert."""

    bundle: Path | None = Field(
        None,
        description=(
            "Router bundle directory (manifest.json, model.onnx, tokenizer.json). "
            "'none' or unset with no embedded bundle: answer every query with default_expert."
        ),
    )
    default_expert: str | None = Field(
        None, description="Expert used when no router runs; default: the first local expert."
    )
    threads: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "onnxruntime intra-op threads for one routing decision: 2 halves a long query's "
            "latency on a 2-core device (bench.router_latency); 1 leaves a core to generation."
        ),
    )


class BudgetSettings(Section):
    """Spend and latency limits. Requests may tighten them, never loosen them."""

    daily_usd: float | None = Field(None, ge=0, description="Cap on cloud spend per UTC day.")
    monthly_usd: float | None = Field(
        None, ge=0, description="Cap on cloud spend per UTC calendar month."
    )
    max_request_usd: float | None = Field(
        None, ge=0, description="Most one request may cost at worst (prompt + max_tokens)."
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="Skip experts whose measured latency estimate exceeds this."
    )
    expert_daily_usd: dict[str, float] = Field(
        default_factory=dict, description="Per-expert daily caps, JSON: {\"gpt-4o\": 1.5}."
    )
    expert_monthly_usd: dict[str, float] = Field(
        default_factory=dict, description="Per-expert monthly caps, JSON: {\"gpt-4o\": 20}."
    )
    device_daily_usd: float | None = Field(
        None, ge=0,
        description="Cap on this device's cloud spend per UTC day; with a fleet ledger "
                    "(ledger.url) the other caps are the fleet's, this one the device's own.")
    device_monthly_usd: float | None = Field(
        None, ge=0, description="Cap on this device's cloud spend per UTC calendar month.")
    on_exceeded: Literal["local", "refuse"] = Field(
        "local",
        description=(
            "When the chosen cloud expert would break a budget: 'local' answers with the best "
            "expert that fits; 'refuse' answers HTTP 429 with the reason."
        ),
    )


class LedgerSettings(Section):
    """Where spend is kept: this device's SQLite file, or a fleet's PostgreSQL database."""

    url: SecretStr | None = Field(
        None,
        description=(
            "PostgreSQL URL of the fleet's spend ledger (postgresql://USER:PASSWORD@HOST/DB): "
            "the budget caps become the fleet's, shared by every device that names it. "
            "Unset: this device's own SQLite ledger. Prefer url_file."
        ),
    )
    url_file: Path | None = Field(
        None,
        description=(
            "File holding the ledger URL; a relative name is looked up in "
            "$CREDENTIALS_DIRECTORY (systemd LoadCredential=) first."
        ),
    )
    device_id: str | None = Field(
        None, min_length=1, max_length=128,
        description=(
            "This device's name in the fleet ledger (its rows, leases and device caps); "
            "unique per device. Default: the machine id (/etc/machine-id)."
        ),
    )
    lease_usd: float | None = Field(
        None, gt=0,
        description=(
            "Offline lease per cloud expert: budget this device reserves from the fleet's "
            "ahead of time and may spend while the database is unreachable. Default: 1% of "
            "the tightest cap that applies to the expert. Every lease counts against the "
            "fleet's caps; a device that never comes back strands at most this much."
        ),
    )
    lease_ttl_s: float = Field(
        3600.0, gt=0,
        description=(
            "How long a lease may be spent offline (it also ends with its UTC day); "
            "renewed while the database is reachable."
        ),
    )
    renew_s: float = Field(
        10.0, gt=0,
        description=(
            "Seconds between syncs with the database: renew leases (and return their "
            "unspent part), upload offline spend, refresh the fleet budget left."
        ),
    )
    connect_timeout_s: int = Field(
        2, ge=2, le=60, description="Longest wait to connect to the database (libpq's least is 2)."
    )
    statement_timeout_s: float = Field(
        2.0, gt=0, le=60,
        description=(
            "Longest wait for one database call; a reservation on the request path is cut "
            "there and falls back to the lease, so an unreachable database never hangs "
            "a request."
        ),
    )

    @field_validator("device_id")
    @classmethod
    def _device_ok(cls, v: str | None) -> str | None:
        if v is not None and (v != v.strip() or any(c.isspace() for c in v)):
            raise ValueError(f"device_id {v!r} must have no spaces")
        return v


class PolicySettings(Section):
    """Trilemma: utility = quality*P(correct) - cost_usd/usd_per_correct - throughput*lat_norm."""

    quality_weight: float = Field(1.0, ge=0, description="Weight of the router's P(correct).")
    usd_per_correct: float | None = Field(
        DEFAULT_USD_PER_CORRECT,
        gt=0,
        description=(
            "What one correct answer is worth to you, in USD: an expert costing c more per "
            "query must be c/usd_per_correct more likely to be right to be chosen. Pick it "
            "with `edgeroute calibrate`; unset (empty) ignores cost (budgets still apply)."
        ),
    )
    throughput_weight: float = Field(
        0.0, ge=0, description="Weight of the expected latency (normalised to the slowest)."
    )
    local_margin: float = Field(
        DEFAULT_LOCAL_MARGIN, ge=0, le=1,
        description=(
            "Between local experts, how much more likely to be right (P(correct) points) "
            "another local expert must be before the router leaves the default one "
            "(router.default_expert, else the first local expert). Pick it with "
            "`edgeroute calibrate --policy local`; 0 routes on the scores alone."
        ),
    )
    latency_ewma_alpha: float = Field(
        0.2, gt=0, le=1, description="Smoothing of the per-expert latency estimate."
    )
    answer_length_alpha: float = Field(
        0.1, gt=0, le=1,
        description=(
            "How fast each expert's expected answer length (what prices its answers in the "
            "utility) follows its real answers on this device: the weight of one answer in "
            "a moving correction of the length model its profile ships."
        ),
    )
    cascade: bool = Field(
        False,
        description=(
            "Local-first cascade: when the policy picks a cloud expert but the best local "
            "expert's P(correct) is within cascade_band of it, answer locally first and ask "
            "the cloud only if the local answer's confidence is below cascade_threshold. "
            "Per request: the body field edgeroute.cascade."
        ),
    )
    cascade_band: float = Field(
        DEFAULT_CASCADE_BAND, ge=0, le=1,
        description="How far below the cloud expert's P(correct) a local expert may be and "
                    "still be tried first.")
    cascade_threshold: float = Field(
        DEFAULT_CASCADE_THRESHOLD, le=0,
        description="Keep a local answer whose confidence (cascade_signal, nats per token) "
                    "is at least this.")
    cascade_signal: Literal["mean_logprob", "min_logprob"] = Field(
        "mean_logprob", description="The confidence: mean or least token log-probability.")
    cascade_stream: bool = Field(
        False, description="Cascade streamed requests too: the local answer is buffered "
                           "(no tokens reach the client until it is kept or escalated).")


def _default_local_experts() -> list[LocalExpertSettings]:
    return [
        LocalExpertSettings(name="qwen2.5-coder-0.5b", model=QWEN_DEFAULT),
        LocalExpertSettings(name="smollm2-135m", model=SMOLLM2_DEFAULT),
    ]


class Settings(BaseSettings):
    """Everything the daemon and the CLI read. See the module docstring for sources."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        env_file_encoding="utf-8",
    )

    paths: PathsSettings = Field(default_factory=PathsSettings, description="Directories.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="REST server.")
    local_experts: list[LocalExpertSettings] = Field(
        default_factory=_default_local_experts,
        description=(
            "Local GGUF experts as a JSON list; the first is the offline fallback. "
            "Default: Qwen2.5-Coder-0.5B-Instruct and SmolLM2-135M-Instruct from PyPI."
        ),
    )
    cloud_experts: list[CloudExpertSettings] = Field(
        default_factory=list, description="Cloud experts (OpenAI-compatible) as a JSON list."
    )
    router: RouterSettings = Field(default_factory=RouterSettings, description="Router.")
    budget: BudgetSettings = Field(default_factory=BudgetSettings, description="Budgets.")
    policy: PolicySettings = Field(default_factory=PolicySettings, description="Policy.")
    ledger: LedgerSettings = Field(default_factory=LedgerSettings, description="Spend ledger.")
    outcomes: OutcomesSettings = Field(default_factory=OutcomesSettings,
                                       description="Outcomes, feedback, shadow grading, refits.")

    @model_validator(mode="after")
    def _experts_consistent(self) -> Settings:
        if not self.local_experts:
            raise ValueError("local_experts: at least one local expert is required (offline-first)")
        names = self.expert_names()
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"expert names must be unique; repeated: {sorted(dupes)}")
        if self.router.default_expert is not None and self.router.default_expert not in names:
            raise ValueError(
                f"router.default_expert {self.router.default_expert!r} is not a configured "
                f"expert; choose one of {names}"
            )
        self.outcomes.check_experts({e.name: "local" for e in self.local_experts}
                                    | {e.name: "cloud" for e in self.cloud_experts})
        return self

    def expert_names(self) -> list[str]:
        return [e.name for e in self.local_experts] + [e.name for e in self.cloud_experts]

    def default_expert(self) -> str:
        return self.router.default_expert or self.local_experts[0].name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence in one place: init > environment > env files (later file wins). Both
        variable sources name the variable and its layer when a value is not JSON."""
        from agent.settings_sources import JsonCheckedDotEnvSource, JsonCheckedEnvSource

        files = [p for p in default_env_files() if p.is_file()]
        return (init_settings, JsonCheckedEnvSource(settings_cls),
                JsonCheckedDotEnvSource(settings_cls, files), file_secret_settings)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings tree; ``overrides`` are nested dicts from CLI flags."""
    return Settings(**overrides)
