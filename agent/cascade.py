"""The local-first cascade's two decisions, pure (no I/O, no clocks; property-tested in
tests/agent/test_cascade.py). Issue #18.

Routing decides from the query alone; a cascade also uses the local answer itself:

1. :func:`local_first`: the policy chose a cloud expert, but the best local expert's
   P(correct) is within ``band`` of it: answer on the device first (free, private).
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


def local_first(decision: Decision, kinds: Mapping[str, str], band: float) -> str | None:
    """The local expert to try before ``decision.expert``, or None: only when the policy
    chose a cloud expert by utility (not a client's request, not a fallback), and the
    feasible local expert with the highest score is within ``band`` of the cloud's."""
    if decision.refused or decision.fallback_from is not None:
        return None
    if kinds.get(decision.expert) != "cloud" or decision.expert not in decision.scores:
        return None
    local = [n for n, k in kinds.items()
             if k == "local" and n not in decision.rejected and n in decision.scores]
    if not local:
        return None
    best = max(local, key=lambda n: (decision.scores[n], n == local[0]))
    if decision.scores[best] >= decision.scores[decision.expert] - band:
        return best
    return None


def keep_local(signal_value: float | None, finish_reason: str, rule: CascadeRule) -> bool:
    """Whether the local answer stands: it was not cut off and its confidence clears the
    threshold. No confidence (an expert that cannot report it) never stands."""
    if finish_reason == "length" or signal_value is None:
        return False
    return signal_value >= rule.threshold
