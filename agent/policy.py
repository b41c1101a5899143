"""The pure decision core: router scores, expert facts, budgets and hints in; a frozen
``Decision`` out. No I/O and no clocks, so it is property-tested (tests/agent/test_policy.py).

Utility of a feasible expert e (``utility``, shared with ``edgeroute evaluate`` and
``edgeroute calibrate`` so the knob they recommend is the knob the daemon applies):
    u(e) = w_quality * P(e correct) - cost(e) / usd_per_correct - w_tput * lat(e) / max_lat
where P is the router's score, cost the expected USD of this request at e's prices (a
typical count of the prompt plus the answer length e is expected to give this query,
capped by max_tokens: ``agent.answer_length``; the same function prices ``evaluate``'s and
``calibrate``'s decisions), ``usd_per_correct`` what a
correct answer is worth to the user (one knob, in dollars; unset: cost is not weighed) and
lat the measured latency estimate. Between local experts the default one is sticky
(``switch_penalty``): another local expert must beat its utility by more than
``local_margin`` (chosen on validation by ``edgeroute calibrate --policy local``).
An expert is feasible when it is available, its worst-case cost (prompt + max_tokens)
fits the per-request limit and the remaining spend, its latency estimate fits the latency
limit, and it has what the request needs (``missing_capability``: tools,
response_format, the media of its content parts, a context that holds the prompt plus
max_tokens). Because cost enters
linearly, the chosen expert's cost can only rise as a correct answer is worth more (a
property test holds us to it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.answer_length import LengthModel
from agent.routing import QueryFeatures
from cloud_bridge.messages import MEDIA_PARTS
from cloud_bridge.usage import Prices

REFUSED = ""  # Decision.expert when no expert fits
ALL_MODALITIES = frozenset(MEDIA_PARTS.values())


@dataclass(frozen=True)
class ExpertState:
    """What the policy knows about one expert at decision time."""

    name: str
    kind: str  # "local" | "cloud"
    prices: Prices = field(default_factory=Prices)
    available: bool = True
    latency_s: float | None = None  # moving estimate from real calls; None = not measured
    remaining_usd: float | None = None  # least budget left over the caps that apply
    # This request's expected answer length (agent/answer_length.py, already capped by
    # max_tokens); None: unknown, priced at max_tokens.
    expected_output_tokens: float | None = None
    context_tokens: int | None = None  # context window; None = unknown, not checked
    prompt_tokens: int | None = None  # this expert's own count (its tokenizer); None: req's
    tools: bool = True  # can answer a request with ``tools``
    json_mode: bool = True  # can honour ``response_format``
    modalities: frozenset[str] = ALL_MODALITIES  # media it reads in content parts

    def worst_case_usd(self, req: Request) -> float:
        """What a budget reserves: the prompt's upper bound plus every allowed token."""
        return self.prices.usd(req.prompt_tokens, req.max_tokens)

    def output_tokens(self, req: Request) -> float:
        out = self.expected_output_tokens
        return float(req.max_tokens) if out is None else min(float(req.max_tokens), out)

    def expected_usd(self, req: Request) -> float:
        """What the utility weighs: a typical count of the prompt and the expected answer."""
        return self.prices.usd(req.expected_prompt_tokens or req.prompt_tokens,
                               self.output_tokens(req))


@dataclass(frozen=True)
class Weights:
    quality: float = 1.0
    usd_per_correct: float | None = None  # what a correct answer is worth; None: free
    throughput: float = 0.0
    local_margin: float = 0.0  # how much more likely to be right another local expert must be


def switch_penalty(local: Sequence[bool], default: int | None, margin: float) -> list[float]:
    """Utility taken from each expert so that the default expert, when it is local, is left
    for another local expert only on a gain above ``margin`` (P(correct) points); cloud
    experts are weighed by cost instead. Shared with ``edgeroute calibrate``."""
    if default is None or not local[default] or margin <= 0:
        return [0.0] * len(local)
    return [margin if is_local and i != default else 0.0 for i, is_local in enumerate(local)]


def utility(p_correct: Any, cost_usd: Any, usd_per_correct: float | None,
            quality: float = 1.0) -> Any:
    """Expected value of an answer, in correct answers: P(correct) minus its cost counted
    in correct answers. Works on floats and numpy arrays alike (evaluate, calibrate)."""
    if usd_per_correct is None:
        return quality * p_correct
    return quality * p_correct - cost_usd / usd_per_correct


@dataclass(frozen=True)
class Request:
    """The request's side: who it names, its size, and the limits in force for it."""

    requested: str | None
    prompt_tokens: int  # the prompt's upper bound (agent/prompt_size.py)
    max_tokens: int
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    expected_prompt_tokens: int | None = None  # a typical count (None: the upper bound)
    tools: bool = False  # the request has ``tools``
    json_mode: bool = False  # the request has ``response_format`` other than text
    # Media its content parts carry: modality -> the first message with it (the 400's param)
    media: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Assessment:
    """One expert as the policy weighed it for one request (``routing.experts``)."""

    p_correct: float | None  # the router's score; None: not scored (a named expert)
    expected_cost_usd: float  # what the utility weighs
    expected_output_tokens: float
    worst_case_usd: float  # what a budget reserves
    latency_s: float | None
    utility: float | None = None  # None: not feasible, or not weighed
    rejected: str | None = None  # why it is not feasible

    def as_dict(self) -> dict[str, object]:
        return {
            "p_correct": None if self.p_correct is None else round(self.p_correct, 6),
            "expected_cost_usd": round(self.expected_cost_usd, 8),
            "expected_output_tokens": round(self.expected_output_tokens, 1),
            "worst_case_usd": round(self.worst_case_usd, 8),
            "expected_latency_s": self.latency_s,
            "utility": None if self.utility is None else round(self.utility, 6),
            "feasible": self.rejected is None,
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class Decision:
    """Who answers and why, with what the policy expected of it: ``expected_cost_usd`` is
    what the utility weighed (the expected answer), ``worst_case_usd`` what a budget
    reserves (prompt bound plus max_tokens)."""

    expert: str
    reason: str
    mode: str
    scores: Mapping[str, float] = field(default_factory=dict)
    fallback_from: str | None = None
    expected_quality: float | None = None
    expected_cost_usd: float = 0.0
    worst_case_usd: float = 0.0
    expected_latency_s: float | None = None
    rejected: Mapping[str, str] = field(default_factory=dict)
    cascade: Mapping[str, object] | None = None  # the local attempt, when one was made
    assessed: Mapping[str, Assessment] = field(default_factory=dict)
    # What the request path needs later, not shown in ``routing``: the prompt's upper bound
    # (billed when a peer reports no usage), the query's features and the length models
    # that priced it (an answer's real length corrects them), from the router that scored.
    prompt_bound: int = field(default=0, compare=False)
    id: str = field(default="", compare=False)  # the completion id the reply carries
    query: QueryFeatures | None = field(default=None, compare=False)
    lengths: Mapping[str, LengthModel | None] = field(default_factory=dict, compare=False)

    @property
    def refused(self) -> bool:
        return self.expert == REFUSED

    def as_dict(self) -> dict[str, object]:
        return {
            "expert": self.expert or None,
            "reason": self.reason,
            "mode": self.mode,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "fallback_from": self.fallback_from,
            "expected_quality": self.expected_quality,
            "expected_cost_usd": round(self.expected_cost_usd, 8),
            "worst_case_usd": round(self.worst_case_usd, 8),
            "expected_latency_s": self.expected_latency_s,
            "rejected": dict(self.rejected),
            "experts": {n: a.as_dict() for n, a in self.assessed.items()},
            **({"cascade": dict(self.cascade)} if self.cascade is not None else {}),
        }


def tighter(device: float | None, request: float | None) -> float | None:
    """The stricter of two optional limits: a request can tighten, never loosen."""
    if device is None:
        return request
    if request is None:
        return device
    return min(device, request)


NOT_SUPPORTED = "does not support "
TOO_LONG = "prompt of up to "


def lacks_capability(reason: str | None) -> bool:
    """Whether a rejection reason is a missing capability (not a passing condition)."""
    return reason is not None and reason.startswith((NOT_SUPPORTED, TOO_LONG))


def missing_capability(e: ExpertState, req: Request) -> tuple[str, str] | None:
    """The request field ``e`` cannot serve and why, or None. Capabilities never change
    while the daemon runs, so when no expert has one the request itself is wrong (400
    naming the field), unlike a budget or an open breaker."""
    if req.tools and not e.tools:
        return "tools", NOT_SUPPORTED + "tools"
    if req.json_mode and not e.json_mode:
        return "response_format", NOT_SUPPORTED + "response_format"
    for modality, index in sorted(req.media.items(), key=lambda m: m[1]):
        if modality not in e.modalities:
            return f"messages.{index}.content", f"{NOT_SUPPORTED}{modality} input"
    if e.context_tokens is not None:
        n = req.prompt_tokens if e.prompt_tokens is None else e.prompt_tokens
        if n + req.max_tokens > e.context_tokens:
            return "messages", (f"{TOO_LONG}{n} tokens + max_tokens {req.max_tokens} "
                                f"> context of {e.context_tokens}")
    return None


def why_infeasible(e: ExpertState, req: Request) -> str | None:
    missing = missing_capability(e, req)
    if missing is not None:
        return missing[1]
    if not e.available:
        return "unavailable"
    cost = e.worst_case_usd(req)
    if req.max_cost_usd is not None and cost > req.max_cost_usd:
        return f"worst-case cost ${cost:.6f} > max request ${req.max_cost_usd:.6f}"
    if e.remaining_usd is not None and cost > e.remaining_usd:
        return f"worst-case cost ${cost:.6f} > budget left ${max(e.remaining_usd, 0):.6f}"
    if (req.max_latency_ms is not None and e.latency_s is not None
            and e.latency_s * 1000 > req.max_latency_ms):
        return f"latency estimate {e.latency_s * 1000:.0f} ms > {req.max_latency_ms:.0f} ms"
    return None


def _utilities(
    scores: Mapping[str, float], feasible: list[ExpertState], req: Request, w: Weights,
    default_expert: str | None = None,
) -> dict[str, float]:
    lats = {e.name: e.latency_s or 0.0 for e in feasible}
    max_lat = max(lats.values())
    names = [e.name for e in feasible]
    penalty = switch_penalty([e.kind == "local" for e in feasible],
                             names.index(default_expert) if default_expert in names else None,
                             w.local_margin)
    return {
        e.name: utility(scores.get(e.name, 0.0), e.expected_usd(req), w.usd_per_correct,
                        w.quality)
        - (w.throughput * lats[e.name] / max_lat if max_lat > 0 else 0.0) - pen
        for e, pen in zip(feasible, penalty, strict=True)
    }


def assess(scores: Mapping[str, float], experts: Mapping[str, ExpertState], req: Request,
           rejected: Mapping[str, str], util: Mapping[str, float]) -> dict[str, Assessment]:
    """Every expert as the policy saw it for ``req`` (what ``routing.experts`` shows)."""
    return {n: Assessment(scores.get(n), e.expected_usd(req), e.output_tokens(req),
                          e.worst_case_usd(req), e.latency_s, util.get(n), rejected.get(n))
            for n, e in experts.items()}


def decide(
    scores: Mapping[str, float],
    experts: Mapping[str, ExpertState],
    req: Request,
    *,
    weights: Weights = Weights(),
    default_expert: str,
    mode: str,
) -> Decision:
    """Pick the expert for one request; ``Decision.refused`` when none fits."""
    rejected = {n: r for n, e in experts.items() if (r := why_infeasible(e, req)) is not None}
    feasible = [e for n, e in experts.items() if n not in rejected]
    scores = dict(scores)
    util = (_utilities(scores, feasible, req, weights, default_expert)
            if feasible and req.requested is None else {})
    assessed = assess(scores, experts, req, rejected, util)

    def made(name: str, reason: str, fallback_from: str | None = None) -> Decision:
        a = assessed[name]
        return Decision(name, reason, mode, scores, fallback_from, scores.get(name),
                        a.expected_cost_usd, a.worst_case_usd, a.latency_s, rejected,
                        assessed=assessed)

    if req.requested is not None:
        if req.requested not in rejected:
            return made(req.requested, "requested by client")
        why = rejected[req.requested]
    if not feasible:
        return Decision(REFUSED, "no expert fits: " + "; ".join(
            f"{n}: {r}" for n, r in sorted(rejected.items())), mode, scores, req.requested,
            rejected=rejected, assessed=assessed)
    if req.requested is not None:
        # The client named an expert that can't take the request: best one that fits.
        best = _best(scores, feasible, req, weights, default_expert)
        return made(best, f"requested {req.requested!r} {why}; best expert that fits",
                    fallback_from=req.requested)
    if mode == "fixed" and default_expert not in rejected:
        return made(default_expert, "fixed mode: default expert")
    best = _pick(util, feasible, req, default_expert)
    reason = ("highest utility" if mode != "fixed" else "default expert over a limit; best fit")
    if best == default_expert and weights.local_margin > 0:
        free = _best(scores, feasible, req, replace(weights, local_margin=0.0), default_expert)
        if free != best:
            reason += (f" (kept the default: {free} gains less than local_margin "
                       f"{weights.local_margin:g})")
    if rejected:
        reason += f" (skipped: {', '.join(sorted(rejected))})"
    return made(best, reason)


def _best(scores: Mapping[str, float], feasible: list[ExpertState], req: Request,
          weights: Weights, default_expert: str) -> str:
    return _pick(_utilities(scores, feasible, req, weights, default_expert), feasible, req,
                 default_expert)


def _pick(util: Mapping[str, float], feasible: list[ExpertState], req: Request,
          default_expert: str) -> str:
    costs = {e.name: e.worst_case_usd(req) for e in feasible}
    # Ties: cheaper first, then the default expert, then by name, for determinism.
    return min(util, key=lambda n: (-util[n], costs[n], n != default_expert, n))
