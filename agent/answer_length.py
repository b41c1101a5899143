"""How long an expert's answer will be: the expected output tokens that price a decision.

The utility weighs what a request is expected to cost, and an answer's length is most of a
cloud call's price: GPT-4-1106 answers an ARC question in one token and an MBPP task in
about 300 (the committed table). Pricing every answer at ``max_tokens`` makes any priced
expert look dear (README's GPT-4 example took no query at all), while budgets rightly keep
reserving that worst case.

Model: ``log(1 + tokens)`` of an expert's answers to a query q is normal with mean
``mu(q) = u(q) . theta + bias`` (``u(q)`` the router's query vector; no ``theta``: the
expert's mean alone) and spread ``sigma``, fitted from a table's output-token column
(``export/length_fit.py``) and kept in the expert's profile. The expected length is that of
the answer *as delivered*, ``E[min(tokens, max_tokens)]``, in closed form, so it is capped
by ``max_tokens`` by construction.

On the device, :class:`LengthCorrection` corrects each expert's model by what its real
answers measure: a moving offset in log space, seeded at 0 (the data's prior). An answer
cut by ``max_tokens`` only says the full answer was longer, so it moves the offset up,
never down. The same functions price decisions in ``edgeroute evaluate`` and
``calibrate`` (README: "one estimate everywhere").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LengthModel:
    """One expert's answer lengths: ``log(1 + tokens) ~ Normal(u(q) . theta + bias, sigma)``."""

    bias: float
    sigma: float = 0.0
    theta: tuple[float, ...] = ()  # empty: the same for every query (the expert's mean)
    observations: int = 0  # answers it was fitted on

    def mu(self, u: Sequence[float] | None) -> float:
        """Mean of log(1 + tokens) for a query with vector ``u`` (None: unknown, the bias)."""
        if not self.theta or u is None:
            return self.bias
        return self.bias + sum(a * b for a, b in zip(u, self.theta, strict=True))

    def expected_tokens(self, u: Sequence[float] | None, max_tokens: int,
                        offset: float = 0.0) -> float:
        return capped_mean(self.mu(u) + offset, self.sigma, max_tokens)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bias": round(self.bias, 6), "sigma": round(self.sigma, 6),
                               "observations": self.observations}
        if self.theta:
            out["theta"] = [round(float(t), 7) for t in self.theta]
        return out

    @classmethod
    def parse(cls, raw: Any, dim: int, where: str) -> LengthModel:
        """From a profile's ``length`` object; ValueError names what is wrong."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: length must be an object")
        theta = tuple(float(t) for t in raw.get("theta") or ())
        model = cls(float(raw["bias"]), float(raw.get("sigma", 0.0)), theta,
                    int(raw.get("observations", 0)))
        if theta and len(theta) != dim:
            raise ValueError(f"{where}: length theta must have {dim} numbers, not {len(theta)}")
        if not all(math.isfinite(v) for v in (model.bias, model.sigma, *theta)) or (
                model.sigma < 0):
            raise ValueError(f"{where}: length bias, sigma and theta must be finite, sigma >= 0")
        return model


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def capped_mean(mu: float, sigma: float, max_tokens: int) -> float:
    """``E[min(T, max_tokens)]`` for ``log(1 + T) ~ Normal(mu, sigma)``: with X = 1 + T
    log-normal and M = max_tokens + 1, E[min(X, M)] = e^(mu + s^2/2) Phi((ln M - mu - s^2)/s)
    + M (1 - Phi((ln M - mu)/s))."""
    if max_tokens <= 0:
        return 0.0
    cap = float(max_tokens) + 1.0
    mu = max(min(mu, 30.0), -30.0)
    if sigma <= 1e-9:
        return max(min(math.exp(mu), cap) - 1.0, 0.0)
    log_cap = math.log(cap)
    below = math.exp(mu + sigma * sigma / 2) * _phi((log_cap - mu - sigma * sigma) / sigma)
    above = cap * (1.0 - _phi((log_cap - mu) / sigma))
    return max(min(below + above, cap) - 1.0, 0.0)


@dataclass
class LengthCorrection:
    """The device's correction of each expert's length model from its real answers: an
    offset in log space, moved by ``alpha`` toward each answer's residual. Its models come
    with each decision (a router reload may replace them); the correction stays."""

    alpha: float = 0.1  # weight of one answer
    offsets: dict[str, float] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)  # observed per expert

    def expected(self, expert: str, model: LengthModel | None, u: Sequence[float] | None,
                 max_tokens: int) -> float | None:
        """Expected delivered tokens of ``expert``'s answer; None: no model, unknown."""
        if model is None:
            return None
        return model.expected_tokens(u, max_tokens, self.offsets.get(expert, 0.0))

    def observe(self, expert: str, model: LengthModel | None, u: Sequence[float] | None,
                tokens: int, cut: bool) -> None:
        """One real answer of ``tokens`` tokens; ``cut``: it stopped at max_tokens, so its
        full length is only known to be larger (it can raise the offset, never lower it)."""
        if model is None or tokens < 0:
            return
        offset = self.offsets.get(expert, 0.0)
        residual = math.log1p(tokens) - (model.mu(u) + offset)
        if cut and residual < 0:
            return
        self.offsets[expert] = offset + self.alpha * residual
        self.answers[expert] = self.answers.get(expert, 0) + 1

    def describe(self, expert: str, model: LengthModel | None) -> dict[str, Any]:
        return {"length_model": None if model is None else (
                    "per query" if model.theta else "mean"),
                "length_observations": 0 if model is None else model.observations,
                "device_answers": self.answers.get(expert, 0),
                "device_offset": round(self.offsets.get(expert, 0.0), 4)}
