"""Metric sanity checks that can fail: real MiniLM, real GGUF, real subprocess tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.datasets import load_gsm8k, load_mbpp
from export.metrics import (
    BertSim,
    NllScorer,
    extract_code,
    grade,
    grade_arc,
    grade_gsm8k,
    grade_pubmedqa,
    run_mbpp_tests,
)


@pytest.fixture(scope="module")
def bertsim() -> BertSim:
    return BertSim()


@pytest.fixture(scope="module")
def scorer(smollm_gguf: Path) -> Iterator[NllScorer]:
    s = NllScorer(smollm_gguf, n_ctx=512, n_threads=2)
    yield s
    s.close()


def test_bertsim_self_is_one_and_unrelated_is_lower(bertsim: BertSim) -> None:
    ref = "Janet sells 9 eggs at $2 each, so she makes $18 every day."
    para = "She makes 18 dollars a day by selling nine eggs for two dollars each."
    unrelated = "The mitochondria is the powerhouse of the cell."
    assert bertsim.similarity(ref, ref) == pytest.approx(1.0, abs=1e-4)
    sims = bertsim.similarities([ref, ref], [para, unrelated])
    assert sims[0] > 0.6 > sims[1]


def test_bertsim_batches_agree_with_single_calls(bertsim: BertSim) -> None:
    a = ["short", "a much longer sentence that needs padding in the batch", "third"]
    b = ["tiny", "another sentence", "3rd"]
    batched = bertsim.similarities(a, b)
    single = [bertsim.similarity(x, y) for x, y in zip(a, b, strict=True)]
    assert batched == pytest.approx(single, abs=1e-4)


def test_nll_prefers_the_right_answer(scorer: NllScorer) -> None:
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    paris, berlin = scorer.nll(msgs, "Paris"), scorer.nll(msgs, "Berlin")
    assert paris is not None and berlin is not None
    assert 0 < paris < berlin


def test_nll_of_reference_below_shuffled_reference(scorer: NllScorer) -> None:
    rng = random.Random(0)
    for q in load_gsm8k()[:3]:
        msgs = [{"role": "user", "content": q.prompt}]
        words = q.reference.split()
        shuffled = " ".join(rng.sample(words, len(words)))
        ref_nll, shuf_nll = scorer.nll(msgs, q.reference), scorer.nll(msgs, shuffled)
        assert ref_nll is not None and shuf_nll is not None
        assert ref_nll < shuf_nll


def test_nll_none_when_too_long(scorer: NllScorer) -> None:
    assert scorer.nll([{"role": "user", "content": "hi"}], "word " * 2000) is None


def test_graders() -> None:
    assert grade_arc("B) wet palms", "B") == 1.0
    assert grade_arc("The answer is C.", "C") == 1.0
    assert grade_arc("A plant needs water, so D) water.", "A") == 0.0
    choices = ["dry", "wet", "palms covered with oil", "x"]
    assert grade_arc("palms covered with oil", "C", choices) == 1.0
    assert grade_arc("A\n", "A") == 1.0
    assert grade_gsm8k("9 * 2 = 18\n#### 18", "18") == 1.0
    assert grade_gsm8k("so 1,000 in total", "1000") == 1.0
    assert grade_gsm8k("#### 17", "18") == 0.0
    assert grade_pubmedqa("Maybe. The data are unclear.", "maybe") == 1.0
    assert grade_pubmedqa("No, it does not.", "yes") == 0.0


def test_mbpp_tests_run_in_subprocess() -> None:
    q = next(q for q in load_mbpp() if q.query_id == "mbpp-2")
    assert grade(q, f"Here:\n```python\n{q.reference}\n```\nDone.") == 1.0
    assert grade(q, "```python\ndef similar_elements(a, b):\n    return ()\n```") == 0.0
    assert run_mbpp_tests("while True:\n    pass", ["assert True"], timeout_s=1.0) == 0.0
    assert extract_code("no fences at all") == "no fences at all"
