"""The shape of ``GET /v1/dashboard``: what the dashboard page reads, documented in the
OpenAPI document so that a script can read the same figures without the page.

The values are built by ``agent.dashboard``; FastAPI checks each reply against these
models, so the document cannot drift from what is served.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExpertView(_Out):
    name: str
    kind: Literal["local", "cloud"]
    model: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float | None
    profile: str | None = Field(description="The ability profile the router scores it with.")
    profile_source: str | None = Field(
        description="Where the profile came from: setting, device, fleet, shipped, prior.")
    profile_hint: str | None = Field(description="What to do about a prior or lossy profile.")
    accuracy: dict[str, float] | None = Field(
        description="Mean P(correct) the router gives this expert on the shipped sample "
                    "queries, per dataset family (None: the router predicts nothing).")
    breaker: Literal["closed", "open", "half-open"] | None = Field(
        description="A cloud expert's circuit breaker (None: a local expert).")
    available: bool = Field(description="Whether the policy may pick it now.")
    recent_share: float = Field(description="Its share of the recent router decisions.")
    expected_cost_usd: float | None = Field(
        description="Mean expected cost of a query on it over the recent router decisions.")
    gain_needed: float | None = Field(
        description="Median P(correct) points it lacked where it was not chosen.")
    latency_estimate_s: float | None
    budget_left_usd: float | None = Field(
        description="Least budget left over the caps that apply to it (None: uncapped).")


class ExpertSpend(_Out):
    day_usd: float
    month_usd: float
    settled_calls: int
    open_reservations: int


class CapView(_Out):
    label: str
    period: Literal["day", "month"]
    scope: Literal["all", "expert", "device"]
    cap_usd: float
    spent_usd: float | None = Field(
        description="Counted against it (settled plus open reservations); None: a fleet-wide "
                    "cap, see fleet.fleet_left_usd.")
    left_usd: float | None


class FleetView(_Out):
    device_id: str | None
    online: bool
    unsynced_rows: int | None
    lease_usd: dict[str, float] = Field(description="Unspent offline lease per expert.")
    leased_usd: dict[str, float] = Field(
        description="Leases this device holds in the fleet database, per expert.")
    fleet_left_usd: dict[str, float] = Field(
        description="Least fleet budget left over an expert's caps, at the last sync.")


class SpendView(_Out):
    ledger: Literal["device", "fleet"]
    day: str | None
    month: str | None
    total_day_usd: float | None
    total_month_usd: float | None
    open_reservations: int
    experts: dict[str, ExpertSpend]
    caps: list[CapView]
    fleet: FleetView | None
    error: str | None = Field(description="Why the spend could not be read (fleet offline).")


class LatencyView(_Out):
    count: int
    mean_s: float | None
    p50_s: float | None = Field(description="Median, interpolated in the histogram buckets.")
    p95_s: float | None


class TrafficBucket(_Out):
    start: float = Field(description="Epoch seconds the bucket starts at.")
    experts: dict[str, int] = Field(description="Served decisions per chosen expert.")
    route_calls: int = Field(description="Route-only decisions (POST /v1/route).")


class FallbackView(_Out):
    from_expert: str
    to_expert: str
    count: int


class TrafficView(_Out):
    bucket_s: int
    buckets: list[TrafficBucket]
    decisions: dict[str, int] = Field(description="Served decisions by kind (metrics).")
    route_calls: int
    requests: dict[str, int] = Field(description="Answered requests per expert.")
    fallbacks: list[FallbackView]
    refusals: dict[str, int]
    cascade: dict[str, int] = Field(description="Local-first cascade outcomes.")
    router_latency: LatencyView
    request_latency: dict[str, LatencyView]


class DecisionView(_Out):
    id: int
    completion_id: str
    at: float
    expert: str | None
    served: bool
    auto: bool
    mode: str
    reason: str
    p_correct: float | None
    expected_cost_usd: float
    answered_by: str | None
    latency_s: float | None
    cost_usd: float | None = Field(description="What the ledger settled for the answer.")
    utilities: dict[str, float]
    costs: dict[str, float] = Field(description="Every expert's expected cost of it.")
    query: str | None = Field(
        description="The routed text's head, only with server.dashboard_prompts on.")


class DashboardView(_Out):
    object: Literal["edgeroute.dashboard"] = "edgeroute.dashboard"
    generated_at: float
    uptime_s: float
    show_prompts: bool
    default_expert: str
    fallback_expert: str
    router: dict[str, Any] = Field(description="What /health says of the router.")
    experts: list[ExpertView]
    spend: SpendView
    traffic: TrafficView
    decisions: list[DecisionView] = Field(description="The newest last, at most `decisions`.")
