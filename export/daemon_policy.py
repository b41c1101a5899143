"""The daemon's policy replayed on a table: the same prices, the same prompt count, the same
answer-length models and the same ``agent.policy.decide`` for every query, so a figure
``evaluate`` or ``calibrate`` reports is one the daemon reproduces through ``/v1/route``.

What a deployed router knows of a table's expert: its profile (P(correct) and its answer
lengths, resolved as the daemon resolves a configured expert, ``agent.profiles.resolve``),
and its prices: the table's own (its header's ``prices_usd_per_mtok``, or fitted from its
rows' cost and token columns), or ``--price NAME=IN,OUT`` as a user configures them. An
expert with no price is free, that is local. The realised cost of a choice is the table's
``cost_usd`` for that row; ``realised_capped`` bills its answer at most ``max_tokens``
output tokens, the answer the same request would have got.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.answer_length import LengthModel
from agent.policy import Decision, ExpertState, Request, Weights, decide
from agent.prompt_size import prompt_size
from cloud_bridge.usage import Prices
from export.errors import PipelineError


def parse_prices(specs: Sequence[str]) -> dict[str, Prices]:
    """``NAME=IN,OUT`` (USD per 1M input and output tokens), as a user configures them."""
    out: dict[str, Prices] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        try:
            pin, pout = (float(x) for x in value.split(","))
        except ValueError:
            raise PipelineError(f"--price {spec!r}: give NAME=IN,OUT in USD per 1M tokens, "
                                "e.g. gpt-4-1106-preview=10,30") from None
        if not name or pin < 0 or pout < 0:
            raise PipelineError(f"--price {spec!r}: a name and two non-negative prices")
        out[name] = Prices(pin, pout)
    return out


def table_prices(table: Path, m: Any) -> dict[str, Prices]:
    """Each priced expert's prices: the table header's, else a least-squares fit of its
    rows' cost on their input and output tokens (an expert whose rows cost nothing has
    none: it is local)."""
    declared: dict[str, Prices] = {}
    opener = gzip.open if str(table).endswith(".gz") else open
    try:
        with opener(table, "rt", encoding="utf-8") as f:
            head = json.loads(f.readline())
        for src in (head, head.get("before") or {}):
            for name, (pin, pout) in (src.get("prices_usd_per_mtok") or {}).items():
                declared.setdefault(name, Prices(float(pin), float(pout)))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    v = m.values
    for j, e in enumerate(m.experts):
        if e in declared:
            continue
        rows = np.isfinite(v["cost_usd"][:, j]) & np.isfinite(v["input_tokens"][:, j]) & (
            np.isfinite(v["output_tokens"][:, j]))
        cost = v["cost_usd"][rows, j]
        if not rows.any() or not (cost > 0).any():
            continue
        a = np.stack([v["input_tokens"][rows, j], v["output_tokens"][rows, j]], axis=1) / 1e6
        (pin, pout), *_ = np.linalg.lstsq(a, cost, rcond=None)
        declared[e] = Prices(max(float(pin), 0.0), max(float(pout), 0.0))
    return declared


@dataclass(frozen=True)
class DaemonPolicy:
    """What the daemon would weigh for a table's experts."""

    experts: list[str]
    kinds: dict[str, str]  # local (free) or cloud (priced)
    prices: dict[str, Prices]
    lengths: dict[str, LengthModel | None]
    weights: Weights
    default_expert: str
    max_tokens: int = 256

    def states(self, query: str, u: np.ndarray | None) -> tuple[dict[str, ExpertState], Request]:
        size = prompt_size([{"role": "user", "content": query}])
        req = Request(None, size.upper_bound, self.max_tokens,
                      expected_prompt_tokens=size.typical)
        vec = None if u is None else tuple(float(x) for x in u)
        states = {}
        for e in self.experts:
            model = self.lengths.get(e)
            states[e] = ExpertState(
                e, self.kinds[e], self.prices.get(e, Prices()),
                expected_output_tokens=None if model is None else model.expected_tokens(
                    vec, self.max_tokens))
        return states, req

    def decide_all(self, queries: Sequence[str], scores: np.ndarray,
                   u: np.ndarray | None, mode: str = "profile") -> list[Decision]:
        """The daemon's decision for every query (scores in ``self.experts`` order)."""
        out = []
        for i, q in enumerate(queries):
            states, req = self.states(q, None if u is None else u[i])
            out.append(decide(dict(zip(self.experts, scores[i].tolist(), strict=True)),
                              states, req, weights=self.weights,
                              default_expert=self.default_expert, mode=mode))
        return out

    def expected_costs(self, queries: Sequence[str], u: np.ndarray | None) -> np.ndarray:
        """Expected USD of each query on each expert (queries x experts)."""
        out = np.zeros((len(queries), len(self.experts)))
        for i, q in enumerate(queries):
            states, req = self.states(q, None if u is None else u[i])
            out[i] = [states[e].expected_usd(req) for e in self.experts]
        return out


def build(router: Any, experts: list[str], prices: Mapping[str, Prices], *,
          usd_per_correct: float | None, local_margin: float, default_expert: str | None,
          train_mean: Mapping[str, float], max_tokens: int = 256) -> DaemonPolicy:
    """The daemon's view of ``experts``: their profiles' length models resolved as the
    daemon resolves them, free experts local, the default the first local expert given
    (else the local one with the best training mean, as ``calibrate --policy local``)."""
    from agent.experts.info import ExpertInfo
    from agent.profiles import resolve

    profiles = getattr(router, "profiles", None)
    kinds = {e: "cloud" if prices.get(e, Prices()).usd(1, 1) > 0 else "local" for e in experts}
    lengths: dict[str, LengthModel | None] = {}
    for e in experts:
        lengths[e] = (resolve(ExpertInfo(e, kinds[e], e), profiles, {}).length
                      if profiles is not None else None)
    local = [e for e in experts if kinds[e] == "local"]
    if default_expert is None:
        # A device always has a local expert; a table may not (every row priced): then the
        # cheapest expert stands in as the default (it only breaks ties there).
        pool = local or sorted(experts, key=lambda e: prices.get(e, Prices()).usd(1, 1))[:1]
        default_expert = max(pool, key=lambda e: train_mean.get(e, -1.0))
    return DaemonPolicy(experts, kinds, dict(prices), lengths,
                        Weights(1.0, usd_per_correct, 0.0, local_margin), default_expert,
                        max_tokens)
