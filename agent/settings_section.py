"""The base of every section of the settings tree: strict (an unknown key is an error
naming it) and frozen (settings are read, never changed in place). A leaf, so the tree
(``agent.settings``) and the sections kept beside it (``agent.expert_settings``,
``agent.outcomes_settings``) share one definition."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One section of the settings tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)
