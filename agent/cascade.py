"""The local-first cascade's two decisions, pure (no I/O, no clocks; property-tested in
tests/agent/test_cascade.py). Issue #18.

Routing decides from the query alone; a cascade also uses the local answer itself:

1. :func:`local_first`: the policy chose a cloud expert, but the best local expert's
   P(correct) is within ``band`` of it: answer on the device first (free, private).
   :func:`first_local` says why not otherwise (the reply's ``routing.cascade.skipped``).
2. :func:`keep_local`: keep that answer when its confidence (the mean, or the least, token
   log-probability the local model gave its own answer) clears ``threshold`` and it was
   not cut off by ``max_tokens``; otherwise ask the cloud expert the policy chose.

``edgeroute evaluate`` simulates the same two rules on a table's test split
(``export.cascade_sim``), and ``edgeroute calibrate --policy cascade`` chooses band and
threshold on the validation split, so the daemon applies what was measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent.policy import Decision

Signal = Literal["mean_logprob", "min_logprob"]
SIGNALS: tuple[Signal, ...] = ("mean_logprob", "min_logprob")


@dataclass(frozen=True)
class CascadeRule:
    band: float  # try local first when P(best local) >= P(chosen cloud) - band
    threshold: float  # keep the local answer when its signal >= threshold (nats)
    signal: Signal = "mean_logprob"


# Why the cascade did not try a local expert first, as ``routing.cascade.skipped`` says.
NOT_BY_UTILITY = "not chosen by utility"  # a fallback, or no expert fits
LOCAL_CHOSEN = "the policy chose a local expert"
UNSCORED = "no router score for the cloud expert"
NO_LOCAL_FITS = "no local expert fits"
OUTSIDE_BAND = "outside the band"


def first_local(decision: Decision, kinds: Mapping[str, str],
                band: float) -> tuple[str | None, str | None]:
    """``(local expert, None)`` to try before ``decision.expert``, else ``(None, why not)``.
    Only when the policy chose a cloud expert by utility (not a client's request, not a
    fallback), and the feasible local expert with the highest score is within ``band`` of
    the cloud's."""
    if decision.refused or decision.fallback_from is not None:
        return None, NOT_BY_UTILITY
    if kinds.get(decision.expert) != "cloud":
        return None, LOCAL_CHOSEN
    if decision.expert not in decision.scores:
        return None, UNSCORED
    local = [n for n, k in kinds.items()
             if k == "local" and n not in decision.rejected and n in decision.scores]
    if not local:
        return None, NO_LOCAL_FITS
    best = max(local, key=lambda n: (decision.scores[n], n == local[0]))
    if decision.scores[best] >= decision.scores[decision.expert] - band:
        return best, None
    return None, OUTSIDE_BAND


def local_first(decision: Decision, kinds: Mapping[str, str], band: float) -> str | None:
    """The local expert to try before ``decision.expert``, or None (:func:`first_local`)."""
    return first_local(decision, kinds, band)[0]


def keep_local(signal_value: float | None, finish_reason: str, rule: CascadeRule) -> bool:
    """Whether the local answer stands: it was not cut off and its confidence clears the
    threshold. No confidence (an expert that cannot report it) never stands."""
    if finish_reason == "length" or signal_value is None:
        return False
    return signal_value >= rule.threshold
