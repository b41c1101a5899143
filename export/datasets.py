"""Instruction datasets as queries: the paper's four sets from ``../shared/data``, MMLU,
MMLU-Pro, and CRUXEval and MATH level 5 as ZeroEval asked them, and a user's own JSONL.

Every loader turns its source rows into :class:`Query` objects: a stable id, the
instruction prompt an expert sees, the free-text reference that BERTSim and NLL compare
against, and the exact answer that a grader checks (ARC letter, GSM8K number, PubMedQA
decision, MBPP tests). Files are read only when a loader is called, never from a hub.
The shared data dir is ``<repo>/../shared/data`` unless ``EDGEROUTE_SHARED_DATA`` names
another one.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from export.errors import DatasetError
from export.table import json_objects

SHARED_DATA_VAR = "EDGEROUTE_SHARED_DATA"
LETTERS = "ABCDE"
DATASETS: tuple[str, ...] = ("arc", "gsm8k", "mbpp", "pubmedqa")


@dataclass(frozen=True)
class Query:
    """One query with what is needed to prompt, compare and grade."""

    query_id: str
    dataset: str
    prompt: str
    reference: str
    answer: str | None = None  # exact answer: ARC letter, GSM8K number, PubMedQA decision
    tests: tuple[str, ...] = ()  # MBPP asserts
    test_setup: str = ""
    split: str | None = None
    source_text: str = ""  # the raw question, for joining with public routing tables
    extra: dict[str, Any] = field(default_factory=dict)


def shared_data_dir() -> Path:
    """``$EDGEROUTE_SHARED_DATA`` or the ``shared/data`` folder next to the repository."""
    raw = os.environ.get(SHARED_DATA_VAR)
    if raw:
        return Path(raw).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _open(path: Path) -> IO[str]:
    if not path.is_file():
        raise DatasetError(
            f"dataset file {path} does not exist; set {SHARED_DATA_VAR} to the shared data dir"
        )
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")  # type: ignore[return-value]
    return path.open(encoding="utf-8")


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad lines raise naming file:line."""
    try:
        with _open(path) as f:
            yield from json_objects(f, path, DatasetError)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc


def _need(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise DatasetError(f"{where}: field {key!r} missing or not a {kind.__name__}")
    return value


def normalise_text(text: str) -> str:
    """Lower-case, drop punctuation and collapse spaces: the join key across sources."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


# -- ARC ------------------------------------------------------------------------------
def arc_prompt(stem: str, choices: list[str]) -> str:
    options = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return (
        f"Question: {stem}\n{options}\n"
        "Answer with the letter of the correct option, then its text."
    )


def load_arc(
    data_dir: Path | None = None, subsets: tuple[str, ...] = ("challenge", "easy")
) -> list[Query]:
    """ARC test sets. Ids: ``arc-c-<line>`` / ``arc-e-<line>`` (1-based file line)."""
    base = (data_dir or shared_data_dir()) / "arc"
    out: list[Query] = []
    for subset in subsets:
        path = base / f"arc_{subset}_test.jsonl.gz"
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            stem = _need(obj, "query", str, where).strip()
            stem = stem.removeprefix("Question:").strip()
            choices = _need(obj, "choices", list, where)
            gold = obj.get("gold")
            if not isinstance(gold, int) or not 0 <= gold < len(choices) <= len(LETTERS):
                raise DatasetError(f"{where}: field 'gold' {gold!r} is not a valid option index")
            letter = LETTERS[gold]
            out.append(Query(
                query_id=f"arc-{subset[0]}-{lineno}", dataset="arc",
                prompt=arc_prompt(stem, [str(c) for c in choices]),
                reference=f"{letter}) {choices[gold]}", answer=letter,
                source_text=stem, extra={"subset": subset, "choices": list(choices)},
            ))
    return out


# -- GSM8K ----------------------------------------------------------------------------
_CALC = re.compile(r"<<[^>]*>>")


def gsm8k_prompt(question: str) -> str:
    return (
        f"{question.strip()}\nSolve the problem step by step. End with the final numeric "
        "answer on its own line, written as '#### <number>'."
    )


def load_gsm8k(data_dir: Path | None = None, split: str = "test") -> list[Query]:
    """GSM8K. Ids: ``gsm8k-<split>-<line>``; reference = solution without calculator marks."""
    path = (data_dir or shared_data_dir()) / "gsm8k" / f"{split}.jsonl.gz"
    out: list[Query] = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        question = _need(obj, "question", str, where)
        solution = _need(obj, "answer", str, where)
        if "####" not in solution:
            raise DatasetError(f"{where}: field 'answer' has no '#### <number>' final line")
        number = solution.rsplit("####", 1)[1].strip().replace(",", "")
        out.append(Query(
            query_id=f"gsm8k-{split}-{lineno}", dataset="gsm8k", prompt=gsm8k_prompt(question),
            reference=_CALC.sub("", solution), answer=number, source_text=question,
            extra={"index": lineno - 1},
        ))
    return out


# -- MBPP -----------------------------------------------------------------------------
def mbpp_prompt(text: str, tests: list[str]) -> str:
    shown = "\n".join(tests[:1])
    return (
        f"{text.strip()}\nYour code should pass this test:\n{shown}\n"
        "Write the Python function in a ```python code block."
    )


def load_mbpp(data_dir: Path | None = None) -> list[Query]:
    """MBPP full (974 tasks). Ids: ``mbpp-<task_id>``; split from the task id ranges."""
    path = (data_dir or shared_data_dir()) / "mbpp" / "mbpp.jsonl.gz"
    out: list[Query] = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        task_id = _need(obj, "task_id", int, where)
        text = _need(obj, "text", str, where)
        code = _need(obj, "code", str, where)
        tests = _need(obj, "test_list", list, where)
        if not tests or not all(isinstance(t, str) for t in tests):
            raise DatasetError(f"{where}: field 'test_list' must be a non-empty list of strings")
        out.append(Query(
            query_id=f"mbpp-{task_id}", dataset="mbpp", prompt=mbpp_prompt(text, tests),
            reference=code.replace("\r\n", "\n"), tests=tuple(tests),
            test_setup=str(obj.get("test_setup_code") or ""), source_text=text,
            extra={"task_id": task_id},
        ))
    return out


# -- PubMedQA -------------------------------------------------------------------------
def pubmedqa_prompt(question: str, contexts: list[str]) -> str:
    context = "\n".join(c.strip() for c in contexts)
    return (
        f"Context: {context}\nQuestion: {question.strip()}\n"
        "Answer yes, no or maybe first, then explain in one or two sentences."
    )


def load_pubmedqa(data_dir: Path | None = None) -> list[Query]:
    """PubMedQA PQA-L (1,000). Ids: ``pubmedqa-<PMID>``; reference = LONG_ANSWER."""
    path = (data_dir or shared_data_dir()) / "pubmedqa" / "ori_pqal.json.gz"
    try:
        with _open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected one JSON object mapping PMID to a record")
    out: list[Query] = []
    for pmid, rec in data.items():
        where = f"{path}: PMID {pmid}"
        if not isinstance(rec, dict):
            raise DatasetError(f"{where}: record is not an object")
        question = _need(rec, "QUESTION", str, where)
        decision = _need(rec, "final_decision", str, where).strip().lower()
        if decision not in ("yes", "no", "maybe"):
            raise DatasetError(f"{where}: final_decision {decision!r} is not yes/no/maybe")
        out.append(Query(
            query_id=f"pubmedqa-{pmid}", dataset="pubmedqa",
            prompt=pubmedqa_prompt(question, list(_need(rec, "CONTEXTS", list, where))),
            reference=_need(rec, "LONG_ANSWER", str, where).strip(), answer=decision,
            source_text=question,
        ))
    return out


# -- MMLU -----------------------------------------------------------------------------
def load_mmlu(data_dir: Path | None = None, split: str = "test") -> list[Query]:
    """MMLU ``test`` (14,042) or ``dev`` (285), in ARC's multiple-choice prompt. Ids:
    ``mmlu-<subject>-<index in subject>`` for test (RouteLLM's ids), ``mmlu-dev-...`` for
    dev."""
    path = (data_dir or shared_data_dir()) / "mmlu" / f"mmlu_{split}.jsonl.gz"
    out: list[Query] = []
    index: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        subject = _need(obj, "subject", str, where)
        stem = _need(obj, "question", str, where).strip()
        choices = [str(c) for c in _need(obj, "choices", list, where)]
        gold = obj.get("answer")
        if not isinstance(gold, int) or not 0 <= gold < len(choices) <= len(LETTERS):
            raise DatasetError(f"{where}: field 'answer' {gold!r} is not a valid option index")
        i = index[subject] = index.get(subject, -1) + 1
        prefix = "mmlu-" if split == "test" else f"mmlu-{split}-"
        out.append(Query(
            query_id=f"{prefix}{subject}-{i}", dataset="mmlu", prompt=arc_prompt(stem, choices),
            reference=f"{LETTERS[gold]}) {choices[gold]}", answer=LETTERS[gold], split=None,
            source_text=stem, extra={"subject": subject, "choices": choices},
        ))
    return out


# -- ZeroEval's CRUXEval and MATH level 5 ----------------------------------------------
def zeroeval_index(source_id: Any, where: str) -> int:
    """ZeroEval's item index: ``gsm8k-main-test-#N`` / ``crux-test-#N`` or MATH's ``N``."""
    try:
        return int(str(source_id).rsplit("#", 1)[-1])
    except ValueError as exc:
        raise DatasetError(f"{where}: field 'source_id' {source_id!r} is not an item "
                           "index") from exc


def _zeroeval_queries(path: Path, prefix: str, dataset: str) -> list[Query]:
    """One query per ZeroEval item of a task file (it holds one row per item and model):
    the prompt is ZeroEval's user message, the answer its gold. No other staged copy of
    these benchmarks exists, so the routing table is their dataset file. Ids:
    ``<prefix>-<ZeroEval index>``."""
    out: dict[int, Query] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        index = zeroeval_index(obj.get("source_id"), where)
        if index in out:
            continue
        gold = _need(obj, "gold", str, where)
        out[index] = Query(
            query_id=f"{prefix}-{index}", dataset=dataset,
            prompt=_need(obj, "question", str, where), reference=gold, answer=gold,
            source_text=_need(obj, "raw_question", str, where), extra={"index": index},
        )
    return [out[i] for i in sorted(out)]


def load_cruxeval(data_dir: Path | None = None) -> list[Query]:
    """CRUXEval output prediction (800), as ZeroEval asked it. Ids: ``cruxeval-<index>``;
    the answer is the Python literal of the function's output."""
    path = (data_dir or shared_data_dir()) / "routing-zeroeval" / "crux.jsonl.gz"
    return _zeroeval_queries(path, "cruxeval", "cruxeval")


def load_math(data_dir: Path | None = None) -> list[Query]:
    """MATH level 5 (721 problems with integer answers, AI-MO's selection), as ZeroEval
    asked it. Ids: ``math-l5-<index>``; the answer is the gold answer string."""
    path = (data_dir or shared_data_dir()) / "routing-zeroeval" / "math-l5.jsonl.gz"
    return _zeroeval_queries(path, "math-l5", "math")


# -- MMLU-Pro -------------------------------------------------------------------------
MMLU_PRO_LETTERS = "ABCDEFGHIJ"


def mmlu_pro_prompt(category: str, question: str, options: list[str]) -> str:
    """MMLU-Pro's own chain-of-thought prompt (``evaluate_from_local.py``) without its five
    worked examples: the repository's replies end "the answer is (X)", and ours should too
    so one grader reads both."""
    lines = "".join(f"{MMLU_PRO_LETTERS[i]}. {o}\n" for i, o in enumerate(options))
    return (
        f"The following are multiple choice questions (with answers) about {category}. Think "
        'step by step and then finish your answer with "the answer is (X)" where X is the '
        f"correct letter choice.\n\nQuestion:\n{question}\nOptions:\n{lines}"
        "Answer: Let's think step by step."
    )


def load_mmlu_pro(data_dir: Path | None = None) -> list[Query]:
    """MMLU-Pro test (12,032 questions, 3-10 options), its newest revision. Ids:
    ``mmlupro-<question_id>``."""
    path = (data_dir or shared_data_dir()) / "routing-mmlu-pro" / "questions.jsonl.gz"
    out: list[Query] = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        qid = _need(obj, "question_id", int, where)
        question = _need(obj, "question", str, where)
        options = [str(o) for o in _need(obj, "options", list, where)]
        letter = _need(obj, "answer", str, where)
        if not 0 < len(options) <= len(MMLU_PRO_LETTERS) or letter not in (
                MMLU_PRO_LETTERS[: len(options)]):
            raise DatasetError(f"{where}: answer {letter!r} is not one of its "
                               f"{len(options)} options")
        category = _need(obj, "category", str, where)
        out.append(Query(
            query_id=f"mmlupro-{qid}", dataset="mmlu-pro",
            prompt=mmlu_pro_prompt(category, question, options),
            reference=f"{letter}. {options[MMLU_PRO_LETTERS.index(letter)]}", answer=letter,
            source_text=question,
            extra={"choices": options, "category": category, "src": obj.get("src"),
                   "question_id": qid, "revisions": int(obj.get("n_text_versions") or 1)},
        ))
    return out


# -- user JSONL -----------------------------------------------------------------------
def load_user_jsonl(path: Path, default_dataset: str = "user") -> list[Query]:
    """A user's own queries: ``prompt``, ``reference`` and optional ``dataset``/``id``."""
    path = Path(path)
    out: list[Query] = []
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        prompt = _need(obj, "prompt", str, where)
        reference = _need(obj, "reference", str, where)
        dataset = obj.get("dataset") or default_dataset
        if not isinstance(dataset, str):
            raise DatasetError(f"{where}: field 'dataset' must be a string")
        qid = str(obj.get("id") or f"{dataset}-{lineno}")
        if qid in seen:
            raise DatasetError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        out.append(Query(query_id=qid, dataset=dataset, prompt=prompt, reference=reference,
                         source_text=prompt))
    if not out:
        raise DatasetError(f"{path}: no queries (expected JSONL with 'prompt' and 'reference')")
    return out


LOADERS: dict[str, Callable[[Path | None], list[Query]]] = {
    "arc": load_arc,
    "gsm8k": load_gsm8k,
    "mbpp": load_mbpp,
    "pubmedqa": load_pubmedqa,
    "mmlu": load_mmlu,
    "cruxeval": load_cruxeval,
    "math": load_math,
    "mmlu-pro": load_mmlu_pro,
}


def load_dataset(name: str, data_dir: Path | None = None) -> list[Query]:
    loader = LOADERS.get(name)
    if loader is None:
        raise DatasetError(f"unknown dataset {name!r}; choose from {sorted(LOADERS)}")
    return loader(data_dir)


def sample(
    queries: list[Query], n: int | None, seed: int, keep: Callable[[Query], bool] | None = None
) -> list[Query]:
    """A seeded sample of ``n`` queries (all if ``n`` is None), in a stable order.

    ``keep`` restricts the pool first (e.g. to queries that public routing tables cover),
    so that the local experts' rows can be joined with real cloud outcomes.
    """
    pool = [q for q in queries if keep is None or keep(q)]
    pool.sort(key=lambda q: q.query_id)
    if n is None or n >= len(pool):
        return pool
    return random.Random(seed).sample(pool, n)
