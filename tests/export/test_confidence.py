"""The cascade's confidence signal in the pipeline: reference-free checks on real replies,
teacher-forced log-probabilities with a real GGUF (resumable backfill), and agreement with
what the daemon's local expert reports while generating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.metrics import answer_check

# Replies of the shapes the committed table holds (a stated letter, an echoed instruction).
ARC_LETTER = "B) The amount of sunlight the plant receives."
ARC_NONE = "I'm sorry, but I can't determine that from the information given."
PUBMED_ECHO = "Yes, no, or maybe first, then explain: the study design is observational"
PUBMED_STATED = "No. The trial found no difference between the two groups."


@pytest.mark.parametrize(("dataset", "reply", "expected"), [
    ("arc", ARC_LETTER, 1.0),
    ("arc", ARC_NONE, 0.0),
    ("pubmedqa", PUBMED_ECHO, 0.0),
    ("pubmedqa", PUBMED_STATED, 1.0),
    ("gsm8k", "She pays 3 * 15 = 45 dollars.\n#### 45", 1.0),
    ("gsm8k", "Let's think step by step. First we need the price of", 0.0),
    ("mbpp", "```python\ndef add(a, b):\n    return a + b\n```", 1.0),
    ("mbpp", "```python\ndef add(a, b)\n    return a + b\n```", 0.0),  # syntax error
    ("mbpp", "```python\nimport not_a_module_here\n```", 0.0),  # does not run
    ("mmlu", "The answer is C.", 1.0),
    ("custom", "anything", None),
])
def test_reference_free_checks(dataset, reply, expected):
    assert answer_check(dataset, reply) == expected


def _rows() -> list[dict]:
    q = "What is the capital of France? Answer in one word."
    return [
        {"query_id": "q1", "dataset": "custom", "query": q, "expert": "smollm2-135m",
         "response": "Paris", "source": "collected"},
        {"query_id": "q2", "dataset": "custom", "query": q, "expert": "smollm2-135m",
         "response": "Banana helicopter seventeen", "source": "collected"},
        {"query_id": "q3", "dataset": "arc", "query": q, "expert": "gpt4",
         "response": "A) Paris", "source": "routerbench"},
    ]


@pytest.mark.slow
def test_backfill_scores_under_the_model_and_resumes(smollm_gguf: Path, tmp_path: Path):
    from export.confidence import add_confidence
    from export.metrics import NllScorer

    scorer = NllScorer(smollm_gguf, n_ctx=512, n_threads=2)
    partial = tmp_path / "t.partial.jsonl"
    try:
        rows = _rows()
        counts = add_confidence(rows, {"smollm2-135m": scorer.answer_logprobs}, partial)
        assert counts["scored"] == 2
        paris, nonsense, cloud = rows
        assert paris["mean_logprob"] > nonsense["mean_logprob"]  # the model prefers the truth
        assert paris["min_logprob"] <= paris["mean_logprob"] < 0
        assert cloud.get("mean_logprob") is None and cloud["check"] == 1.0
        again = _rows()
        again[1]["response"] = "Lyon"  # a changed answer is scored anew, not resumed
        counts = add_confidence(again, {"smollm2-135m": scorer.answer_logprobs}, partial)
        assert counts == {"scored": 1, "resumed": 1, "unscorable": 0, "kept": 0}
        assert again[0]["mean_logprob"] == paris["mean_logprob"]
        assert len(partial.read_text().splitlines()) == 3
        assert all(json.loads(x)["key"] for x in partial.read_text().splitlines())
    finally:
        scorer.close()


@pytest.mark.slow
def test_teacher_forcing_agrees_with_the_confidence_reported_while_generating(
        smollm_gguf: Path):
    """The table's numbers (scored after the fact) and the daemon's (reported while
    generating) are one signal: the threshold chosen on one applies to the other."""
    import asyncio

    from agent.expert_settings import LocalExpertSettings
    from agent.experts.local import LocalExpert
    from cloud_bridge.wire import SamplingParams
    from export.metrics import NllScorer

    cfg = LocalExpertSettings(name="smollm2-135m", model=str(smollm_gguf), n_threads=2)
    expert = LocalExpert.load(cfg, smollm_gguf)
    scorer = NllScorer(smollm_gguf, n_ctx=1024, n_threads=2)
    try:
        for prompt in ("What is the capital of France?", "Write a haiku about rain."):
            msgs = [{"role": "user", "content": prompt}]
            out = asyncio.run(expert.complete(msgs, SamplingParams(max_tokens=24,
                                                                   temperature=0.0)))
            assert out.confidence is not None, "local experts report their confidence"
            mean, low, n = scorer.answer_logprobs(msgs, out.content)
            assert abs(n - out.confidence.tokens) <= 2
            assert mean == pytest.approx(out.confidence.mean_logprob, abs=0.05)
    finally:
        scorer.close()
        asyncio.run(expert.aclose())
