"""The ``outcomes`` section of the settings tree (``agent.settings.Settings.outcomes``):
what the device keeps of its answers, which sources grade them, and how the profiles are
refitted from them. A leaf (``agent.settings`` imports it), so the section can grow without
growing the tree's file.

Every source is optional and off where it costs something: feedback and the
reference-free checks cost nothing and are on; shadow grading spends money and sends the
user's query to two more experts, so it is off (``shadow_share`` 0) until configured, and
needs a cap of its own when it reaches a cloud expert; the refit schedule is opt-in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.settings_section import Section


class OutcomesSettings(Section):
    """Outcomes of this device's answers: the store, its sources, the profile refit."""

    enabled: bool = Field(
        True,
        description=(
            "Keep one row per routed answer in <data_dir>/outcomes.sqlite3: its completion "
            "id, expert, the router's u(q) and d(q), the time, and later its outcomes "
            "(feedback, checks, shadow grades). No prompt or answer text unless store_text. "
            "What `edgeroute profile update` refits the profiles from.")
    )
    store_text: bool = Field(
        False, description="Also keep each answer's prompt and answer text (off: numbers only).")
    max_answers: int = Field(
        100_000, ge=100, description="Most answer rows kept; the oldest go first.")
    max_age_days: float = Field(
        180.0, gt=0, description="Answer rows (and their outcomes) older than this are deleted.")
    record_route_calls: bool = Field(
        True,
        description=(
            "Keep a row for each POST /v1/route decision too, so a client that calls the "
            "chosen expert itself can report the outcome with the route call's id."),
    )
    feedback: bool = Field(
        True, description="Accept POST /v1/feedback and `edgeroute feedback` (a 0-1 score or "
                          "thumbs up/down per completion id).")
    feedback_weight: float = Field(
        1.0, gt=0, le=10, description="How much one feedback score counts in a refit.")
    checks: bool = Field(
        True,
        description=(
            "Grade answers with the reference-free checks where they apply (a multiple-choice "
            "question's answer states an option; an answer's Python code parses, or runs with "
            "check_run_code), as weak evidence."),
    )
    check_weight: float = Field(
        0.25, gt=0, le=10, description="How much one check outcome counts in a refit.")
    check_run_code: bool = Field(
        False,
        description=(
            "The code check runs an answer's Python definitions in a fresh isolated "
            "interpreter (10 s, no asserts) instead of only parsing them: model-written code "
            "runs on this device."),
    )
    shadow_share: float = Field(
        0.0, ge=0, le=1,
        description=(
            "Share of answered `auto` queries also answered by shadow_reference and graded by "
            "shadow_judge after the reply (an outcome for both experts); the user's query is "
            "sent to both. 0: off."),
    )
    shadow_reference: str | None = Field(
        None, description="The expert whose answer the judge compares with (a configured name).")
    shadow_judge: str | None = Field(
        None, description="The expert that grades both answers with the fixed rubric.")
    shadow_judge_format: Literal["json_schema", "json_object", "none"] = Field(
        "json_schema",
        description=(
            "How the judge is asked for its grades: json_schema (OpenAI structured outputs), "
            "json_object with the schema attached (llama.cpp's server: a grammar), or none "
            "(the rubric's instruction alone; the reply is parsed either way)."),
    )
    shadow_weight: float = Field(
        0.7, gt=0, le=10, description="How much one shadow grade counts in a refit.")
    shadow_max_tokens: int = Field(
        256, ge=16, le=4096, description="max_tokens of the reference's answer.")
    shadow_daily_usd: float | None = Field(
        None, ge=0,
        description=(
            "Cap on shadow grading's cloud spend per UTC day, apart from the user's calls "
            "(<data_dir>/shadow-ledger.sqlite3); every call is reserved in the spend ledger "
            "too, under the budget caps."),
    )
    shadow_monthly_usd: float | None = Field(
        None, ge=0, description="Cap on shadow grading's cloud spend per UTC calendar month.")
    shadow_max_inflight: int = Field(
        2, ge=1, le=64, description="Shadow gradings at once; more sampled queries are skipped.")
    refit_every_s: float | None = Field(
        None, gt=0,
        description=(
            "The daemon refits the profiles from the outcomes this often (seconds) and swaps "
            "an improved set in atomically; unset: only `edgeroute profile update`."),
    )
    refit_min_outcomes: int = Field(
        30, ge=5, description="Outcomes an expert needs before its profile is refitted.")
    refit_holdout: float = Field(
        0.25, gt=0, lt=1,
        description=(
            "Share of outcomes held back from the fit: the refit is applied only when it "
            "predicts them better (log-likelihood and Brier score) than the current profile."),
    )
    refit_min_z: float = Field(
        2.0, ge=0,
        description=(
            "How sure the held-back improvement must be: the refit's mean log-loss gain per "
            "held-back outcome must exceed this many standard errors of it (0: any gain)."),
    )
    refit_l2: float = Field(
        10.0, gt=0, description="Pull of theta toward the prior profile in a refit.")
    refit_l2_bias: float = Field(
        3.0, gt=0, description="Pull of the bias toward the prior profile in a refit.")

    @model_validator(mode="after")
    def _shadow_named(self) -> OutcomesSettings:
        if self.shadow_share > 0 and (self.shadow_reference is None or self.shadow_judge is None):
            raise ValueError("outcomes.shadow_share > 0 needs outcomes.shadow_reference and "
                             "outcomes.shadow_judge (configured expert names)")
        return self

    def check_experts(self, kinds: dict[str, str]) -> None:
        """The shadow experts exist, and a cloud one has a cap of its own (raises
        ValueError naming the setting)."""
        if self.shadow_share <= 0:
            return
        for key, name in (("shadow_reference", self.shadow_reference),
                          ("shadow_judge", self.shadow_judge)):
            if name not in kinds:
                raise ValueError(f"outcomes.{key} {name!r} is not a configured expert; "
                                 f"choose one of {sorted(kinds)}")
        cloud = [n for n in (self.shadow_reference, self.shadow_judge) if kinds[str(n)] == "cloud"]
        if cloud and self.shadow_daily_usd is None and self.shadow_monthly_usd is None:
            raise ValueError(f"shadow grading calls the cloud expert {cloud[0]!r}: set "
                             "outcomes.shadow_daily_usd or outcomes.shadow_monthly_usd")
