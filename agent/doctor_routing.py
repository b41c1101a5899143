"""``edgeroute doctor``'s routing rows: how traffic splits over the configured experts, and
which expert is never chosen and what it lacks.

From a running daemon on this device when one answers (``/health``: its last
``RECENT`` router decisions, served ones), else from the daemon's own decision made
in-process on a shipped sample of 48 queries (``agent/assets/route_sample.jsonl``: 12 each
of GSM8K, MBPP, PubMedQA and MMLU, from the calibration set). A cloud expert that takes
none of them is a warning with the P(correct) points its score would have needed at the
current ``usd_per_correct``: its price or its profile keeps it out, and nothing else would
tell the user before the bill (or its absence) did.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from agent.settings import Settings

RECENT = 200  # decisions /health summarises
MIN_DECISIONS = 20  # fewer from a daemon: the sample says more


def sample_rows() -> list[tuple[str, str]]:
    """(dataset family, prompt) of each shipped sample query (the dashboard's accuracy)."""
    text = (resources.files("agent") / "assets" / "route_sample.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(str(r["dataset"]), str(r["prompt"])) for r in rows]


def sample_queries() -> list[str]:
    return [prompt for _, prompt in sample_rows()]


def from_daemon(settings: Settings, timeout: float = 1.0) -> dict[str, Any] | None:
    """The running daemon's split (``/health`` is open without the token), or None."""
    import httpx

    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.server.port}/health"
    try:
        body = httpx.get(url, timeout=timeout).json()
    except (httpx.HTTPError, ValueError):
        return None
    experts = body.get("experts") if isinstance(body, dict) else None
    if not isinstance(experts, list) or body.get("recent_decisions", 0) < MIN_DECISIONS:
        return None
    return {"where": f"the daemon's last {body['recent_decisions']} router decisions",
            "decisions": body["recent_decisions"],
            "experts": {e["name"]: {"share": e.get("recent_share"),
                                    "expected_cost_usd": e.get("expected_cost_usd"),
                                    "gain_needed": e.get("gain_needed")} for e in experts}}


def from_sample(settings: Settings) -> dict[str, Any]:
    """The daemon's decisions, made in-process, on the shipped sample queries."""
    from agent.runtime import build_decider
    from cloud_bridge.wire import SamplingParams

    decider, ledger = build_decider(settings)
    params = SamplingParams(max_tokens=min(settings.server.default_max_tokens,
                                           settings.server.max_tokens_cap))
    try:
        queries = sample_queries()
        for q in queries:
            try:
                decider.decide("auto", [{"role": "user", "content": q}], params)
            except Exception:  # noqa: BLE001 - a refusal is a decision too; it shows as none
                continue
        split = decider.shares()
    finally:
        ledger.close()
    return {"where": f"{len(queries)} sample queries routed in-process", **split}


def routing_rows(settings: Settings, kinds: dict[str, str]) -> list[tuple[str, str, str]]:
    """(check, status, detail) per configured expert."""
    try:
        split = from_daemon(settings) or from_sample(settings)
    except Exception as exc:  # noqa: BLE001 - a doctor reports, it does not crash
        return [("routing", "warn", f"cannot route the sample queries: {exc}")]
    v = settings.policy.usd_per_correct
    out = []
    for name, row in split["experts"].items():
        share, cost, gain = row["share"] or 0.0, row["expected_cost_usd"], row["gain_needed"]
        detail = f"{share:.0%} of {split['where']}"
        if cost is not None:
            detail += f"; expected ${cost:.6f} a query"
        if kinds.get(name) == "cloud" and share == 0:
            need = f" (median: its P(correct) would need +{gain:.2f})" if gain is not None else ""
            worth = "cost not weighed" if v is None else f"usd_per_correct ${v:g}"
            out.append((f"routing {name}", "warn",
                        f"{detail}: never chosen{need} at {worth}; raise "
                        "policy.usd_per_correct, check its prices, or calibrate its "
                        f"profile (`edgeroute experts calibrate {name}`)"))
        else:
            out.append((f"routing {name}", "ok", detail))
    return out
