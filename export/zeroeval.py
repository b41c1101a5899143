"""The ZeroEval table (``routing-zeroeval/``): 53 models' zero-shot replies to GSM8K,
CRUXEval output prediction and MATH level 5, as expert-table rows.

Rows: one per (item, model). ``query`` is ZeroEval's user message (the question and its
JSON-answer instruction), ``response`` the reply's tail as staged (the last 1,500
characters), ``expert`` the model's canonical profile name (``agent.model_names``).
Query ids are the datasets' (``export.datasets``): GSM8K items are our GSM8K test lines
(``gsm8k-test-<N+1>``, checked by text), CRUXEval ``cruxeval-<N>``, MATH ``math-l5-<N>``.

Lengths. ``output_len`` is the reply's length before the cut, so ``output_tokens`` is
ceil(output_len / 4) for every row, truncated or not; o1's hidden reasoning is not in it.
``input_tokens`` is the same estimate of the question (local models' chat template aside).

Correctness as the source has it (``grader`` ``zeroeval/label-<task>``): GSM8K's own
``correct``; for CRUXEval and MATH, ZeroEval's rules applied to the answer its parser
extracted (``src/evaluation/crux_eval.py``, ``math_eval.py``): CRUXEval compares the
strings with quotes stripped; MATH compares the first number of each answer after dropping
``$`` and ``,``. Both reproduce ZeroEval's published accuracy for every model. ``table
regrade`` then grades every reply with our grader for its dataset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.model_names import ModelNames
from export.datasets import Query, iter_jsonl, load_dataset, normalise_text, zeroeval_index
from export.errors import DatasetError
from export.table_sources import (
    SOURCE_GRADERS,
    ZEROEVAL,
    cut_response,
    estimate_tokens,
    expert_name,
    tokens_for_chars,
)

# ZeroEval's task -> (file, our dataset)
TASKS: dict[str, tuple[str, str]] = {
    "gsm": ("gsm.jsonl.gz", "gsm8k"), "crux": ("crux.jsonl.gz", "cruxeval"),
    "math-l5": ("math-l5.jsonl.gz", "math"),
}
_FIRST_NUMBER = re.compile(r"-?\d+(\.\d+)?")
# ZeroEval's undated Gemini names ran before 2024-09-24, when they meant -001 (today they
# mean -002, which is what a user typing them gets: agent.model_names).
RENAMES = {"gemini-1.5-pro": "gemini-1.5-pro-001", "gemini-1.5-flash": "gemini-1.5-flash-001"}
_FRACTION = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*")


def crux_label(extracted: str | None, gold: str) -> float:
    """ZeroEval's CRUXEval rule: with quotes stripped from both ends, the strings are
    equal and not empty (reproduces its published accuracy for all 48 models)."""
    if extracted is None:
        return 0.0
    answer, expected = extracted.strip("'\""), gold.strip("'\"")
    return float(bool(answer) and answer == expected)


def _sanitise(answer: str) -> str:
    """ZeroEval's ``sanitize_math_answers``, with a fraction ``a/b`` evaluated by division
    instead of ``eval``."""
    answer = answer.replace("$", "").strip().replace(",", "")
    m = _FRACTION.fullmatch(answer) if "/" in answer else None
    if m and float(m.group(2)) != 0:
        answer = str(float(m.group(1)) / float(m.group(2)))
    return answer


def math_label(extracted: str | None, gold: str) -> float:
    """ZeroEval's MATH rule: the first numbers of both sanitised answers are equal."""
    if extracted is None:
        return 0.0
    a = _FIRST_NUMBER.search(_sanitise(extracted))
    b = _FIRST_NUMBER.search(_sanitise(gold.replace("#", "").strip()))
    return float(a is not None and b is not None and float(a.group()) == float(b.group()))


def _label(task: str, obj: dict[str, Any], where: str) -> float:
    if task == "gsm":
        if obj.get("correct") not in (0, 1):
            raise DatasetError(f"{where}: gsm row without a 0/1 'correct'")
        return float(obj["correct"])
    extracted, gold = obj.get("extracted"), str(obj.get("gold"))
    return crux_label(extracted, gold) if task == "crux" else math_label(extracted, gold)


def _queries(dataset: str, data_dir: Path) -> dict[int, Query]:
    """Our query of each ZeroEval item index (GSM8K: test line N+1 for ZeroEval's #N)."""
    return {int(q.extra["index"]): q for q in load_dataset(dataset, data_dir)}


def import_zeroeval(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Rows of the three task files, in file order (see the module docstring)."""
    folder = data_dir / "routing-zeroeval"
    names = ModelNames.of()
    experts: dict[str, str] = {}  # the table's model name -> canonical
    for task, (file, dataset) in TASKS.items():
        queries = _queries(dataset, data_dir)
        path = folder / file
        checked: set[int] = set()  # GSM8K items whose question matched ours
        for line, obj in iter_jsonl(path):
            where = f"{path}:{line}"
            q = queries.get(zeroeval_index(obj.get("source_id"), where))
            if q is None:
                raise DatasetError(f"{where}: item {obj.get('source_id')!r} is not in our "
                                   f"{dataset} queries")
            if task == "gsm" and q.extra["index"] not in checked:
                if normalise_text(q.source_text) != normalise_text(str(obj.get("raw_question"))):
                    raise DatasetError(f"{where}: question differs from {q.query_id}'s")
                checked.add(int(q.extra["index"]))
            output, length = obj.get("output"), obj.get("output_len")
            model = str(obj.get("model"))
            if model not in experts:
                experts[model] = expert_name(RENAMES.get(model, model), names)
            yield {
                "query_id": q.query_id, "dataset": dataset, "split": None,
                "query": str(obj.get("question") or q.prompt), "reference": q.reference,
                "expert": experts[model],
                "response": cut_response(output), "correct": _label(task, obj, where),
                "input_tokens": estimate_tokens(str(obj.get("question") or q.prompt)),
                "output_tokens": (tokens_for_chars(length) if isinstance(length, int)
                                  else estimate_tokens(output)),
                "source": ZEROEVAL, "grader": f"{SOURCE_GRADERS[ZEROEVAL]}-{task}",
            }
