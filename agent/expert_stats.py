"""What the daemon learns about its experts from their real answers: a moving latency
estimate and the correction of each expert's answer-length model. The policy reads both
(``ExpertState.latency_s``, ``expected_output_tokens``); the dispatcher feeds both, once per
answer, through :meth:`ExpertStats.observe`, and nothing else writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.answer_length import LengthCorrection, LengthModel
from agent.settings import PolicySettings


@dataclass
class ExpertStats:
    latency_alpha: float = 0.2  # policy.latency_ewma_alpha
    latency_s: dict[str, float] = field(default_factory=dict)
    lengths: LengthCorrection = field(default_factory=LengthCorrection)

    @classmethod
    def for_policy(cls, policy: PolicySettings) -> ExpertStats:
        return cls(policy.latency_ewma_alpha, lengths=LengthCorrection(policy.answer_length_alpha))

    def observe(self, expert: str, elapsed_s: float, *, tokens: int | None = None,
                cut: bool = False, model: LengthModel | None = None,
                u: Sequence[float] | None = None) -> None:
        """One answered call: its wall time and, when known, its answer's length under the
        length model its decision priced it with."""
        prev = self.latency_s.get(expert)
        self.latency_s[expert] = (elapsed_s if prev is None
                                  else prev + self.latency_alpha * (elapsed_s - prev))
        if tokens is not None:
            self.lengths.observe(expert, model, u, tokens, cut)
