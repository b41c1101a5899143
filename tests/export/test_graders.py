"""The ARC and PubMedQA graders on real replies of the local experts that version 1 of each
grader misgraded. Every reply here is checked to be in the committed expert table."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.datasets import load_arc
from export.metrics import GRADERS, arc_choice, grade_arc, grade_pubmedqa, pubmedqa_decision
from export.table import read_table

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
SMOL, QWEN = "smollm2-135m", "qwen2.5-coder-0.5b"

# (query id, expert, reply, grade under version 1, grade now)
ARC = [
    # the letter names one option, the text another: the text wins
    ("arc-c-1170", SMOL, "A) Test three sugar cubes, one each in an acid, a base, and water.",
     1.0, 0.0),
    ("arc-c-953", SMOL, "C) shed its skin.", 1.0, 0.0),
    ("arc-c-144", SMOL, "A) Exothermic because energy is absorbed", 1.0, 0.0),
    ("arc-c-423", SMOL, "A) Correctly label all the data in their charts and tables.", 0.0, 1.0),
    ("arc-c-1125", SMOL, "B) switch.", 0.0, 1.0),
    # a later "answer is X" is the answer the reply gives
    ("arc-c-719", SMOL, "A) Earth turns so the stars seem to move.\nThe correct answer is C) "
     "Some stars move faster than others.", 1.0, 0.0),
    ("arc-c-729", SMOL, "A) skin color\n\nThe answer is D) eye color.", 0.0, 1.0),
]
PUBMEDQA = [
    # the instruction echoed back is no decision
    ("pubmedqa-21850494", SMOL, "Yes, no, or maybe first, then explain in one or two sentences.",
     "yes", 1.0, None),
    ("pubmedqa-27456836", SMOL, "Yes, no", "yes", 1.0, None),
    # no decision word: "no" inside a sentence is not a decision
    ("pubmedqa-21194998", QWEN, "Based on the study, minimal access major surgery in the newborn "
     "does not hurt less compared to conventional 'open' surgery.", "no", 1.0, None),
    # the last decision stated wins
    ("pubmedqa-26285789", SMOL, "Yes. Molecular Genotype Provides Useful Information in the "
     "Management of Radioiodine Refractory Thyroid Cancers.\n\nThe answer is:\n\nNo.", "yes",
     1.0, "no"),
]


@pytest.fixture(scope="module")
def table() -> dict[tuple[str, str], str]:
    rows = read_table(ROOT / "artifacts" / "expert_table.jsonl.gz")
    return {(r["query_id"], r["expert"]): r["response"] or "" for r in rows}


@pytest.fixture(scope="module")
def arc() -> dict[str, list[str]]:
    return {q.query_id: list(q.extra["choices"]) for q in load_arc(SHARED, ("challenge",))}


def test_graders_have_versions() -> None:
    assert GRADERS["arc"] == "edgeroute-arc/2" and GRADERS["pubmedqa"] == "edgeroute-pubmedqa/2"
    assert all("/" in name for name in GRADERS.values())


@pytest.mark.parametrize("qid,expert,reply,old,new", ARC)
def test_arc_real_replies(qid: str, expert: str, reply: str, old: float, new: float,
                          table: dict[tuple[str, str], str], arc: dict[str, list[str]]) -> None:
    assert table[(qid, expert)].startswith(reply)
    gold = next(q for q in load_arc(SHARED, ("challenge",)) if q.query_id == qid).answer
    assert gold is not None
    assert grade_arc(reply, gold, arc[qid]) == new != old


def test_arc_rules() -> None:
    choices = ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"]
    assert arc_choice("B) wet palms", choices) == 1
    assert arc_choice("B", choices) == 1
    assert arc_choice("palms covered with oil", choices) == 2  # text only
    assert arc_choice("B) palms covered with lotion", choices) == 3  # text wins
    assert arc_choice("C) palms covered", choices) == 2  # cut off: a prefix of 2 and 3 agrees
    assert arc_choice("A) dry palms\nB) wet palms\nC) palms covered with oil", choices) is None
    assert arc_choice("I am not sure.", choices) is None


@pytest.mark.parametrize("qid,expert,reply,gold,old,decision", PUBMEDQA)
def test_pubmedqa_real_replies(qid: str, expert: str, reply: str, gold: str, old: float,
                               decision: str | None, table: dict[tuple[str, str], str]) -> None:
    assert table[(qid, expert)].startswith(reply)
    assert pubmedqa_decision(reply) == decision
    assert grade_pubmedqa(reply, gold) == 0.0 != old


@pytest.mark.parametrize("reply,decision", [
    ("Yes.", "yes"),
    ("No, fluoroscopy is not essential for retrieval of lower ureteric stones.", "no"),
    ("Maybe. The data are unclear.", "maybe"),
    ('Based on the context provided, the answer to the question "Impact of MPH programs?" is '
     "yes. The text explicitly states ...", "yes"),
    ("Answer: no", "no"),
    ("Yes, no adverse effects were seen.", "yes"),
    ("The answer is no longer clear.", None),
    ('Based on the provided context, the answer is "yes, no or maybe first, then explain."', None),
])
def test_pubmedqa_decisions(reply: str, decision: str | None) -> None:
    assert pubmedqa_decision(reply) == decision
