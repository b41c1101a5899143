"""The CRUXEval, MATH, GSM8K and MMLU-Pro graders on real replies of the public tables.

Each ZeroEval reply below is read from ``routing-zeroeval/`` by (task, item, model) and
checked to end as quoted (a closing brace or fence aside); the grade is ours, and
``zeroeval`` is the label ZeroEval's own rule gives the same row (``export.zeroeval``),
where the two differ on purpose."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from export.datasets import load_mmlu_pro
from export.final_answers import (
    cruxeval_readings,
    grade_cruxeval,
    grade_math,
    grade_mmlu_pro,
    json_answer,
    math_answer,
    math_equal,
    mmlu_pro_letter,
)
from export.metrics import GRADERS, answer_check, grade, grade_gsm8k
from export.zeroeval import crux_label, math_label

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

# (item, model, how the reply ends, our grade, ZeroEval's label)
CRUX = [
    (0, "o1-mini-2024-09-12", '"answer": "[(4, 1), (4, 1), (4, 1), (4, 1), (2, 3), (2, 3)]"',
     1.0, 1.0),
    (0, "Athene-70B", '"answer": "[(3, 1), (2, 3)]"\n}', 0.0, 0.0),
    # a JSON string is the literal or the string itself: "2" answers '2'
    (780, "gemini-1.5-pro", '"answer": "2"\n}\n```', 1.0, 1.0),
    # escapes spelled out in JSON are the string's escapes: tabs
    (711, "Qwen2-72B-Instruct", '"answer": "apples\\\\t\\\\t\\\\tpears\\\\t\\\\t\\\\tbananas"',
     1.0, 1.0),
    # spaces are part of the string
    (64, "gpt-4o-mini-2024-07-18", '"answer": "     7     "\n}\n```', 1.0, 1.0),
    # a boxed bare word (no JSON)
    (413, "Llama-3.1-405B-Inst-fp8@together", "The final answer is: $\\boxed{cwcuc}$", 1.0, 1.0),
    # "')" is no literal; ZeroEval strips the quote and accepts it
    (215, "o1-mini-2024-09-12", '"answer": "\')"\n}\n```', 0.0, 1.0),
    # the string '20' is not the int 20 (CRUXEval's assert fails); ZeroEval strips quotes
    (51, "claude-3-haiku-20240307", '"answer": "\'20\'"\n}\n```', 0.0, 1.0),
]
MATH = [
    (12, "claude-3-haiku-20240307", '"answer": "47 feet"\n}\n```', 1.0, 1.0),  # units
    (144, "Mistral-Large-2", '"answer": "$10,455"\n}\n```', 1.0, 1.0),  # $ and thousands
    (103, "gemma-2-2b-it", '"answer": "10.0"\n}\n```', 1.0, 1.0),  # trailing .0
    (184, "claude-3-5-sonnet-20240620", '"answer": "x = -4"\n}\n```', 1.0, 1.0),
    (274, "Phi-3.5-mini-instruct", "$$\\boxed{\\text{answer: 12}}$$\n}\n```", 1.0, 1.0),
    (487, "gemma-2-9b-it", '"answer": "1112112"\n}\n```', 1.0, 1.0),  # gold 1112112_3
    # a boxed answer in prose: ZeroEval's parser found no JSON answer
    (61, "Meta-Llama-3.1-70B-Instruct@hyperbolic", "The final answer is: $\\boxed{-48}$",
     1.0, 0.0),
    # the template echoed first, the answer last: ZeroEval read the first JSON
    (543, "Qwen2.5-3B-Instruct", '"answer": "8"\n}\n```', 1.0, 0.0),
    # ZeroEval's first number: "6 * sqrt(2)" is 6, "-4, -5" is -4; neither is the answer
    (257, "Qwen2-7B-Instruct", '"answer": "6 * sqrt(2)"\n}', 0.0, 1.0),
    (184, "gemma-2-9b-it", '"answer": "-4, -5"\n}\n```', 0.0, 1.0),
]
GSM = [
    (0, "Athene-70B", '"answer": "18"\n}', 1.0, 1.0),
    # "The final answer is: {json}": version 1 read the reasoning's first number (0)
    (1272, "Meta-Llama-3.1-8B-Instruct", '"answer": "296"\n}', 1.0, 1.0),
    # the number after the answer's last "="
    (158, "gemma-2-2b-it", '"answer": "20 + 6 + 8 = 34"\n}\n```', 1.0, 0.0),
    (823, "Yi-1.5-34B-Chat", '"answer": "14 points (first game) + 4 points (second game) = 18 '
     'points"\n}\n```', 0.0, 1.0),
]


@pytest.fixture(scope="module")
def replies() -> dict[tuple[str, int, str], dict[str, Any]]:
    """The rows of the cases above, read from the staged ZeroEval files."""
    wanted = {("crux", i, m) for i, m, *_ in CRUX} | {("math-l5", i, m) for i, m, *_ in MATH}
    wanted |= {("gsm", i, m) for i, m, *_ in GSM}
    out = {}
    for task in ("crux", "math-l5", "gsm"):
        needles = {f'"model": "{m}"' for t, _i, m in wanted if t == task}
        with gzip.open(SHARED / "routing-zeroeval" / f"{task}.jsonl.gz", "rt") as f:
            for line in f:
                if any(n in line for n in needles):
                    row = json.loads(line)
                    key = (task, int(str(row["source_id"]).rsplit("#", 1)[-1]), row["model"])
                    if key in wanted:
                        out[key] = row
    assert len(out) == len(wanted)
    return out


def test_grader_names() -> None:
    assert GRADERS["cruxeval"] == "edgeroute-cruxeval/1" and GRADERS["math"] == "edgeroute-math/1"
    assert GRADERS["mmlu-pro"] == "edgeroute-mmlu-pro/1" and GRADERS["gsm8k"] == "edgeroute-gsm8k/2"


@pytest.mark.parametrize("item,model,tail,ours,zeroeval", CRUX)
def test_cruxeval_real_replies(item: int, model: str, tail: str, ours: float, zeroeval: float,
                               replies: dict[tuple[str, int, str], dict[str, Any]]) -> None:
    row = replies[("crux", item, model)]
    assert tail in row["output"][-len(tail) - 12:]
    assert grade_cruxeval(row["output"], row["gold"]) == ours
    assert crux_label(row["extracted"], row["gold"]) == zeroeval


@pytest.mark.parametrize("item,model,tail,ours,zeroeval", MATH)
def test_math_real_replies(item: int, model: str, tail: str, ours: float, zeroeval: float,
                           replies: dict[tuple[str, int, str], dict[str, Any]]) -> None:
    row = replies[("math-l5", item, model)]
    assert tail in row["output"][-len(tail) - 12:]
    assert grade_math(row["output"], row["gold"]) == ours
    assert math_label(row["extracted"], row["gold"]) == zeroeval


@pytest.mark.parametrize("item,model,tail,ours,zeroeval", GSM)
def test_gsm8k_real_replies(item: int, model: str, tail: str, ours: float, zeroeval: float,
                            replies: dict[tuple[str, int, str], dict[str, Any]]) -> None:
    row = replies[("gsm", item, model)]
    assert tail in row["output"][-len(tail) - 12:]
    assert grade_gsm8k(row["output"], row["gold"].strip("# ")) == ours
    assert row["correct"] == zeroeval


@pytest.mark.parametrize("a,b,equal", [
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True), ("\\tfrac34", "\\frac{3}{4}", True),
    ("1/2", "\\frac{1}{2}", True), ("0.5", "\\frac{1}{2}", True), ("-\\frac{3}{4}", "-0.75", True),
    ("\\left( 2, 3 \\right)", "(2,3)", True), ("5\\!", "5", True), ("90^\\circ", "90", True),
    ("5 \\text{ cm}", "5", True), ("\\text{5}", "5", True), ("25\\%", "25", True),
    ("\\sqrt2", "\\sqrt{2}", True), ("1{,}000", "1000", True), ("−7", "-7", True),
    ("4i", "4", False), ("-7k", "-7", False), ("(3)", "3", False), ("1,2", "12", False),
    ("2\\sqrt{2}", "\\sqrt{8}", False), ("inf", "inf", True), ("1_3", "13", False),
])
def test_math_equivalence(a: str, b: str, equal: bool) -> None:
    assert math_equal(a, b) is equal


def test_final_answer_extraction() -> None:
    assert json_answer('{"reasoning": "x", "answer": "\\frac{1}{2}"}') == ("\\frac{1}{2}", True)
    assert json_answer('"answer": [(1, 2)],\n}') == ("[(1, 2)]", False)
    assert json_answer('"answer": 42}') == ("42", False)
    assert json_answer("the answer: 5") is None  # prose is no JSON key
    assert math_answer("so \\boxed{\\frac{1}{\\sqrt{2}}} and") == "\\frac{1}{\\sqrt{2}}"
    assert math_answer("The answer is $12$.") == "12"
    assert math_answer("no answer here") is None
    assert cruxeval_readings('"answer": true') == [True]
    assert cruxeval_readings('"answer": null') == [None]
    assert cruxeval_readings("[ANSWER]assert f(1) == [1, 2][/ANSWER]") == [[1, 2]]
    assert cruxeval_readings("I could not work it out.") == []


def test_mmlu_pro_letters() -> None:
    assert mmlu_pro_letter("... so the answer is (C).") == "C"
    assert mmlu_pro_letter("The answer is **D**") == "D"
    assert mmlu_pro_letter("Answer: B\nExplanation: ...") == "B"
    # RouterArena's Gemini reply to an MMLU-Pro question (routing-routerarena/)
    assert mmlu_pro_letter("The most likely correct answer is \\boxed{B}.\n\nExplanation: "
                           "Magnolias are found ...") == "B"
    assert mmlu_pro_letter("F") == "F" and mmlu_pro_letter("(J)") == "J"
    assert mmlu_pro_letter("I think it is the second one.") is None  # MMLU-Pro would say I
    assert mmlu_pro_letter("the answer is (H)", n_options=4) is None  # past the last option
    assert grade_mmlu_pro("the answer is (E) then answer is (A)", "A") == 1.0  # the last one


def test_mmlu_pro_grades_the_tables_letters_against_the_newest_key() -> None:
    """Question 70 (gold I): the letters of three models in ``outcomes.jsonl.gz``."""
    q = next(q for q in load_mmlu_pro(SHARED) if q.query_id == "mmlupro-70")
    assert q.answer == "I" and len(q.extra["choices"]) == 9
    assert grade(q, "I") == 1.0 and grade(q, "F") == 0.0  # DeepSeek-Coder-V2, Llama-2-70b
    assert grade(q, "") == 0.0  # no letter extracted
    assert grade(q, "J") == 0.0  # beyond its 9 options
    assert answer_check("mmlu-pro", "the answer is (B)") == 1.0
    assert answer_check("math", "so 5") == 0.0 and answer_check("cruxeval", '"answer": 1') == 1.0
