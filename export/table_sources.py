"""The public routing tables' names, and what every stage says about them the same way.

A leaf module: the importers write these names into each row's ``source`` and ``grader``,
``export.pool`` infers them for older tables and canonicalises expert names with them,
``export.regrade`` decides by them which rows it may grade again. Keeping them here, not in
the importers, lets those stages import each other one way only (issue #32's cut of the
``importers <-> pool <-> regrade`` cycle). It imports only leaves (``export.errors``,
``agent.model_names``).

It also holds the two conventions every importer shares, so that all public rows are cut
and counted alike: ``response`` is cut to :data:`RESPONSE_CHARS` characters, and tokens a
source does not give are estimated as ceil(chars / 4), OpenAI's rule of thumb, which
matches GPT-4's tokenizer on RouterBench's ARC prompts (4.0 chars per token, derived from
its cost column at $10/1M input).
"""

from __future__ import annotations

import math

from agent.model_names import ModelNames
from cloud_bridge.usage import CHARS_PER_TOKEN
from export.errors import DatasetError

# The two cloud experts of the first public tables, by the names their profiles ship under.
GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mixtral-8x7b-instruct"
ROUTERBENCH_MODELS = {"gpt-4-1106-preview": GPT4, "mistralai/mixtral-8x7b-chat": MIXTRAL}
ROUTELLM_MODELS = {"gpt-4-1106-preview": GPT4, "mistralai/Mixtral-8x7B-Instruct-v0.1": MIXTRAL}
RB_DATASETS = {"arc-challenge": "arc", "mbpp": "mbpp", "winogrande": "winogrande"}

ZEROEVAL = "zeroeval"
MMLU_PRO = "mmlu-pro"
# Every table ``edgeroute table import`` knows, in the order ``all`` imports them.
SOURCES: tuple[str, ...] = ("routerbench", "routellm-gsm8k", "routellm-mmlu", "routerdc",
                            "routerarena", ZEROEVAL, MMLU_PRO)
# The grader behind each public table's own ``correct`` (see each folder's SOURCE.md).
# ZeroEval labels only GSM8K itself; its CRUXEval and MATH rules are re-applied to the
# answer its parser extracted (``export.zeroeval``), per task: ``zeroeval/<task>-label``.
SOURCE_GRADERS = {
    "routerbench": "routerbench/label",
    "routellm-gsm8k": "routellm-gsm8k/label",
    "routellm-mmlu": "routellm-mmlu/label",
    "routerdc": "routerdc/soft-score",
    "routerarena": "routerarena/score",
    ZEROEVAL: "zeroeval/label",
    MMLU_PRO: "mmlu-pro/label",
}
# Sources without a license file: their rows keep scores and lose their response text.
UNLICENSED = frozenset({"routerbench", "routerdc"})

RESPONSE_CHARS = 4000  # longer responses are cut in the table (BERTSim sees 256 tokens)


def tokens_for_chars(chars: int) -> int:
    """ceil(chars / 4) (``cloud_bridge.usage.CHARS_PER_TOKEN``, the daemon's estimate too),
    at least 1."""
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def estimate_tokens(text: str | None) -> int | None:
    """:func:`tokens_for_chars` of the text; None for no text."""
    return None if text is None else tokens_for_chars(len(text))


def cut_response(text: str | None) -> str | None:
    return None if text is None else text[:RESPONSE_CHARS]


def expert_name(model: str, names: ModelNames) -> str:
    """The canonical profile name of a public table's model; a model without one is an
    error, so that every model of a public table ships under a name users can type."""
    canonical = names.canonical(model)
    if canonical is None:
        raise DatasetError(f"model {model!r} has no canonical profile name: add it to "
                           "agent/model_names.py ALIASES")
    return canonical
