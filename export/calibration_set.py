"""A calibration set for profiling a new expert: auto-gradable queries that no table
in the pooled training corpus holds, shipped as ``export/assets/calibration.jsonl``.

A new expert answers these (``edgeroute collect --user-jsonl`` cannot grade them, so use
:func:`load_calibration_set` with ``export.metrics.grade``) and its per-dataset accuracy
places it among the experts the router knows, without any question the router was
trained or tested on.

Where the queries come from: every ARC test question (Challenge and Easy) is in RouterDC's
table and no other ARC split is staged, so there is no unseen ARC; MMLU dev stands in for
multiple choice (same prompt and grader rules as ARC). GSM8K from the train split (RouterDC
holds 1,000 of its 7,473), MBPP from tasks outside RouterDC's 500 and RouterBench's 427,
PubMedQA from PQA-L outside the committed table and RouterArena. Each dataset's candidates
are split into quartiles of a difficulty proxy and sampled evenly (seeded); ``extra`` holds
the bin as ``difficulty`` (1 easiest):

- GSM8K: lines (steps) of the reference solution.
- MBPP: lines of the reference code.
- PubMedQA: the gold decision, sampled evenly (``maybe`` is the hardest class).
- MMLU: the subject's mean accuracy of Mixtral-8x7B on MMLU test (RouteLLM's table).

Rebuild with ``python -m export.calibration_set`` (reads the public tables and the committed
expert table; deterministic).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

from export.datasets import Query, load_gsm8k, load_mbpp, load_mmlu, load_pubmedqa
from export.errors import DatasetError
from export.table_sources import MIXTRAL

ASSET = "assets/calibration.jsonl"
PER_DATASET = {"gsm8k": 20, "mbpp": 20, "pubmedqa": 20, "mmlu": 20}
# A second draw of the same kind, appended: the first 80 queries stay what they were (a
# profile fitted on them stays comparable) and ``experts calibrate --queries N`` takes the
# first N/4 of each dataset. 100 answers brought every left-out expert within 1 point in
# artifacts/report/irt/loo_draws.json (50: 2 of 18 short).
MORE_PER_DATASET = {"gsm8k": 30, "mbpp": 30, "pubmedqa": 30, "mmlu": 30}
SEED = 15


def load_calibration_set() -> list[Query]:
    """The shipped calibration queries, in the Query shape the graders take."""
    text = resources.files("export").joinpath(ASSET).read_text(encoding="utf-8")
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(Query(**{**obj, "tests": tuple(obj.get("tests") or ())}))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DatasetError(f"export/{ASSET}:{lineno}: not a calibration query ({exc})") from exc
    return out


def corpus_keys(tables: Iterable[Iterable[dict[str, Any]]]) -> set[str]:
    """Question keys (``export.pool.question_key``) of every row of the tables."""
    from export.pool import question_key

    seen: set[str] = set()
    keys: set[str] = set()
    for table in tables:
        for row in table:
            query = str(row["query"])
            if query not in seen:
                seen.add(query)
                keys.add(question_key(query))
    return keys


def query_keys(q: Query) -> set[str]:
    """The keys a query could meet the corpus under: its prompt's question, the bare
    question, and for multiple choice the question with its options."""
    from export.pool import normalise_key, question_key

    keys = {question_key(q.prompt), normalise_key(q.source_text)}
    if q.extra.get("choices"):
        options = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(q.extra["choices"]))
        keys.add(normalise_key(f"{q.source_text}\n{options}"))
    return keys


def _stratified(pool: list[Query], n: int, proxy: Callable[[Query], float],
                rng: random.Random) -> list[Query]:
    """``n`` queries, an even share from each quartile of ``proxy`` (from each value, where
    the proxy has fewer than four)."""
    ranked = sorted(pool, key=lambda q: (proxy(q), q.query_id))
    values = sorted({proxy(q) for q in ranked})
    if len(values) < 4:
        parts = [[q for q in ranked if proxy(q) == v] for v in values]
    else:
        parts = [ranked[b * len(ranked) // 4:(b + 1) * len(ranked) // 4] for b in range(4)]
    out: list[Query] = []
    for b, part in enumerate(parts):
        take = n // len(parts) + (1 if b < n % len(parts) else 0)
        for q in rng.sample(part, min(take, len(part))):
            out.append(Query(**{**asdict(q), "extra": {**q.extra, "difficulty": b + 1},
                                "tests": q.tests}))
    return out


def build(data_dir: Path, keys: set[str], mmlu_accuracy: dict[str, float],
          seed: int = SEED) -> list[Query]:
    """The calibration queries: disjoint from ``keys``, stratified by difficulty."""
    rng = random.Random(seed)
    sources: dict[str, tuple[list[Query], Callable[[Query], float]]] = {
        "gsm8k": (load_gsm8k(data_dir, "train"), lambda q: float(len(q.reference.splitlines()))),
        "mbpp": (load_mbpp(data_dir), lambda q: float(len(q.reference.splitlines()))),
        "pubmedqa": (load_pubmedqa(data_dir),
                     lambda q: float({"yes": 0, "no": 1, "maybe": 2}[q.answer or "yes"])),
        "mmlu": (load_mmlu(data_dir, "dev"),
                 lambda q: -mmlu_accuracy.get(str(q.extra["subject"]), 0.5)),
    }
    free = {name: [q for q in queries if not query_keys(q) & keys]
            for name, (queries, _) in sources.items()}
    out: list[Query] = []
    for per in (PER_DATASET, MORE_PER_DATASET):
        for name, (_, proxy) in sources.items():
            taken = {q.query_id for q in out}
            out += _stratified([q for q in free[name] if q.query_id not in taken], per[name],
                               proxy, rng)
    return out


def mixtral_mmlu_accuracy(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean correctness per MMLU subject of RouteLLM's Mixtral rows."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        if r.get("source") != "routellm-mmlu" or r["expert"] != MIXTRAL:
            continue
        if r["correct"] is not None:
            subject = str(r["query_id"]).removeprefix("mmlu-").rsplit("-", 1)[0]
            sums.setdefault(subject, []).append(float(r["correct"]))
    return {s: sum(v) / len(v) for s, v in sums.items()}


def write(path: Path, queries: list[Query]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps({**asdict(q), "tests": list(q.tests)}, ensure_ascii=False) + "\n")


def main() -> None:
    from export.datasets import shared_data_dir
    from export.importers import IMPORTERS
    from export.table import iter_rows

    data_dir = shared_data_dir()
    root = Path(__file__).resolve().parent
    public = [list(f(data_dir)) for f in IMPORTERS.values()]
    committed = iter_rows(root.parent / "artifacts" / "expert_table.jsonl.gz")
    keys = corpus_keys([committed, *public])
    accuracy = mixtral_mmlu_accuracy(r for t in public for r in t)
    queries = build(data_dir, keys, accuracy)
    write(root / ASSET, queries)
    print(f"wrote {len(queries)} queries to {root / ASSET}")


if __name__ == "__main__":
    main()
