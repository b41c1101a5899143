"""The public routing tables' names, and what every stage says about them the same way.

A leaf module: the importers write these names into each row's ``source`` and ``grader``,
``export.pool`` infers them for older tables and canonicalises expert names with them,
``export.regrade`` decides by them which rows it may grade again. Keeping them here, not in
the importers, lets those stages import each other one way only (issue #32's cut of the
``importers <-> pool <-> regrade`` cycle). It imports nothing of ``export``.

It also holds the two conventions every importer shares, so that all public rows are cut
and counted alike: ``response`` is cut to :data:`RESPONSE_CHARS` characters, and tokens a
source does not give are estimated as ceil(chars / 4), OpenAI's rule of thumb, which
matches GPT-4's tokenizer on RouterBench's ARC prompts (4.0 chars per token, derived from
its cost column at $10/1M input).
"""

from __future__ import annotations

import math

# The two cloud experts of the first public tables, by the names their profiles ship under.
GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mixtral-8x7b-instruct"
ROUTERBENCH_MODELS = {"gpt-4-1106-preview": GPT4, "mistralai/mixtral-8x7b-chat": MIXTRAL}
ROUTELLM_MODELS = {"gpt-4-1106-preview": GPT4, "mistralai/Mixtral-8x7B-Instruct-v0.1": MIXTRAL}
RB_DATASETS = {"arc-challenge": "arc", "mbpp": "mbpp", "winogrande": "winogrande"}

# Every table ``edgeroute table import`` knows, in the order ``all`` imports them.
SOURCES: tuple[str, ...] = ("routerbench", "routellm-gsm8k", "routellm-mmlu", "routerdc",
                            "routerarena")
# The grader behind each public table's own ``correct`` (see each folder's SOURCE.md).
SOURCE_GRADERS = {
    "routerbench": "routerbench/label",
    "routellm-gsm8k": "routellm-gsm8k/label",
    "routellm-mmlu": "routellm-mmlu/label",
    "routerdc": "routerdc/soft-score",
    "routerarena": "routerarena/score",
}
# Sources without a license file: their rows keep scores and lose their response text.
UNLICENSED = frozenset({"routerbench", "routerdc"})

RESPONSE_CHARS = 4000  # longer responses are cut in the table (BERTSim sees 256 tokens)


def estimate_tokens(text: str | None) -> int | None:
    """ceil(chars / 4), at least 1; None for no text."""
    return None if text is None else max(1, math.ceil(len(text) / 4))


def cut_response(text: str | None) -> str | None:
    return None if text is None else text[:RESPONSE_CHARS]

