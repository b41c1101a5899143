"""The reference-free checks and the judge's reply parser: pure functions (hypothesis for
the parser's range)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from agent.answer_checks import check, options, stated_option
from agent.shadow import judge_format, judge_messages, parse_grades, share_point

MC = "Which of these is a noble gas?\nA) Oxygen\nB) Argon\nC) Nitrogen\nD) Carbon"


def test_a_multiple_choice_answer_passes_when_it_states_an_option() -> None:
    assert options(MC) == {"A", "B", "C", "D"}
    assert options("I. think. therefore. A) one") == set()  # no A, B, C run
    assert check(MC, "The answer is B) Argon.").score == 1.0  # type: ignore[union-attr]
    assert check(MC, "B").score == 1.0  # type: ignore[union-attr]
    assert check(MC, "Argon is a noble gas.").score == 0.0  # type: ignore[union-attr]
    assert stated_option("answer: E", {"A", "B", "C"}) is None  # not one of the options
    assert check(MC, "x").kind == "choice"  # type: ignore[union-attr]


def test_code_passes_when_it_parses_or_runs() -> None:
    q = "Write a python function that adds two numbers."
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    broken = "```python\ndef add(a, b)\n    return a + b\n```"
    crashes = "```python\nraise SystemExit(3)\n```"
    assert check(q, good).score == 1.0  # type: ignore[union-attr]
    assert check(q, broken).score == 0.0  # type: ignore[union-attr]
    assert check(q, crashes).score == 1.0  # type: ignore[union-attr]  # parses
    assert check(q, crashes, run_code=True).score == 0.0  # type: ignore[union-attr]
    assert check(q, good, run_code=True).score == 1.0  # type: ignore[union-attr]
    assert check("Say hello.", "Hello!") is None  # no check applies


def test_the_judges_reply_is_read_as_json_or_lines() -> None:
    assert parse_grades('{"scores": [10, 3]}', 2) == [1.0, 0.3]
    assert parse_grades('Sure! {"scores": [7]} done', 1) == [0.7]
    assert parse_grades("Answer 1: 8\nAnswer 2: 0", 2) == [0.8, 0.0]
    assert parse_grades('{"scores": [10]}', 2) is None  # one grade short
    assert parse_grades("Answer 1: 12\nAnswer 2: 3", 2) is None  # off the rubric's scale
    assert parse_grades("I cannot grade this.", 1) is None
    msgs = judge_messages("What is 2+2?", ["4", "5"])
    assert msgs[0]["role"] == "system" and "Rubric" in msgs[0]["content"]
    assert "Answer 2:" in msgs[1]["content"] and "What is 2+2?" in msgs[1]["content"]
    fmt, llama = judge_format(2), judge_format(2, "json_object")
    assert fmt is not None and llama is not None and judge_format(2, "none") is None
    schema = fmt["json_schema"]["schema"]["properties"]["scores"]
    assert schema["minItems"] == schema["maxItems"] == 2
    assert llama["schema"] == fmt["json_schema"]["schema"]


@given(st.lists(st.integers(0, 10), min_size=1, max_size=3))
def test_grades_in_range_round_trip(scores: list[int]) -> None:
    got = parse_grades(json.dumps({"scores": scores}), len(scores))
    assert got == [s / 10 for s in scores]


def test_the_shadow_sample_is_a_stable_share() -> None:
    points = [share_point(f"chatcmpl-{i}") for i in range(4000)]
    assert all(0 <= p < 1 for p in points)
    assert 0.04 < sum(p < 0.05 for p in points) / len(points) < 0.06
    assert share_point("chatcmpl-7") == share_point("chatcmpl-7")
