"""The pure decision core: router scores and request hints in, a frozen ``Decision`` out.

No I/O and no clocks here, so it is property-tested. Budgets and the trilemma weights
extend this function; the daemon only ever acts on what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    expert: str
    reason: str
    mode: str
    scores: Mapping[str, float] = field(default_factory=dict)
    fallback_from: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "expert": self.expert,
            "reason": self.reason,
            "mode": self.mode,
            "scores": {k: round(v, 6) for k, v in self.scores.items()},
            "fallback_from": self.fallback_from,
        }


def decide(
    scores: Mapping[str, float],
    available: frozenset[str],
    *,
    requested: str | None,
    default_expert: str,
    mode: str,
) -> Decision:
    """Pick the expert for one query.

    ``requested`` is the client's ``model`` when it names an expert (``None`` for
    ``auto``): the client's choice wins when that expert is available. Otherwise the
    highest-scoring available expert wins, ties broken by name for determinism; with no
    available scored expert, the default expert answers.
    """
    if requested is not None:
        if requested in available:
            return Decision(requested, "requested by client", mode, dict(scores))
        return Decision(
            default_expert,
            f"requested expert {requested!r} unavailable; answered by the default expert",
            mode,
            dict(scores),
            fallback_from=requested,
        )
    ranked = sorted(
        ((s, e) for e, s in scores.items() if e in available), key=lambda t: (-t[0], t[1])
    )
    if not ranked:
        return Decision(default_expert, "no scored expert available; default expert", mode, {})
    best_score, best = ranked[0]
    if mode == "fixed":
        reason = "fixed mode: default expert"
    else:
        reason = f"highest router score {best_score:.3f}"
    return Decision(best, reason, mode, dict(scores))
