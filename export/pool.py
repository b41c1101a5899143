"""``edgeroute table pool``: merge expert tables from different sources into one corpus.

A query asked in several tables (a GSM8K test question is in our collected table, in
RouteLLM's and in RouterDC's) becomes one query with one ``query_id``, so that a router
sees every expert's outcome on it. The tables word their prompts differently (our
"Question: ...\\nA) ...", RouterDC's "Question:...\\nAnswer:", RouterBench's few-shot ARC
prompt, RouterArena's templates), so the join key is the question itself: each known
prompt template is stripped to its question (plus the options, for MMLU-style prompts whose
options every source shows in the same order, and any context the question needs; ARC
options are shuffled differently per source, so ARC joins on the stem alone, and PubMedQA
on its question), then lower-cased with punctuation dropped
(Unicode-aware, so Chinese CMMLU/C-Eval questions keep their text). Unknown templates join
on their whole prompt.

Rules, in order:
- Rows keep their own ``dataset`` (the source's name: ``arc`` here, ``arc_challenge`` in
  RouterDC), ``query`` (the prompt that expert saw) and ``reference``.
- Across sources, one question is one query; ``query_id`` is the first id seen for it, in
  the order the tables are given (put the collected table first to keep its ids). Within
  one source of one table, rows with the same normalised prompt are one query and
  different prompts stay different queries even where their questions match (MBPP tasks
  217 and 602 ask the same thing with different tests); other sources' rows join the first
  of them. An id already used by another query gets a ``~<n>`` suffix.
- ``split`` is per question: ``test`` if any source puts it in its test split (so no
  source's test question is trained on), else ``train`` if any source says train, else
  null (the trainer splits).
- ``expert`` names are canonicalised where two tables name one model differently (the
  alias table of ``agent.model_names``, which the daemon resolves profiles with; names it
  lacks stay as they are); then one row per (question, expert): the first one wins and
  the rest are counted as duplicates.
- Rows without ``source``/``grader`` (tables written before those columns) get them
  inferred: see :func:`infer_provenance`.

Known merges of different questions: ARC-Easy and ARC-Challenge share 8 stems with
different options; those become one query.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.model_names import ModelNames
from export.table_sources import GPT4, MIXTRAL, SOURCE_GRADERS

COLLECTED = "collected"
_CLOUD = {GPT4, MIXTRAL}
_ID_PREFIX = {
    "routerbench-": "routerbench", "routerdc-": "routerdc", "routerarena-": "routerarena",
    "mmlu-": "routellm-mmlu",
}

_S = re.S
# (template, group names): the first template that matches gives the question.
TEMPLATES: tuple[re.Pattern[str], ...] = (
    # ZeroEval (GSM8K, CRUXEval, MATH): the question, then its JSON-answer instruction
    re.compile(r"\A\n## Question: \n\n(?P<q>.*?)\n\n\n## Instruction \n\n", _S),
    # MMLU-Pro (export.datasets.mmlu_pro_prompt): stem and options, as RouterArena shows them
    re.compile(r"\AThe following are multiple choice questions \(with answers\) about [^\n]*"
               r"\n\nQuestion:\n(?P<q>.*?)\nOptions:\n(?P<o>.*?)\nAnswer: Let's think step "
               r"by step\.\Z", _S),
    # ours (export.datasets): ARC, GSM8K, MBPP, PubMedQA
    re.compile(r"\AQuestion: (?P<q>.*?)\n[A-E]\) .*\nAnswer with the letter of the correct", _S),
    re.compile(r"\A(?P<q>.*)\nSolve the problem step by step\. End with the final numeric", _S),
    re.compile(r"\A(?P<q>.*?)\nYour code should pass this test:\n", _S),
    re.compile(r"\AContext: .*\nQuestion: (?P<q>.*?)\nAnswer yes, no or maybe first", _S),
    # RouterBench ARC / Winogrande: few-shot blocks, then the asked one
    re.compile(r"(?:\A|\n\n)(?P<q>(?:(?!\n\n).)*?)\nA\) (?:(?!\n\n).)*\nPrint only a single "
               r"choice(?:(?!\n\n).)*\Z", _S),
    # RouterDC: ARC "Question:<stem>\nAnswer:", MBPP '"""\n<text>\n<assert>..."""'
    re.compile(r"\AQuestion:(?P<q>.*)\nAnswer:\s*\Z", _S),
    re.compile(r'\A\s*"""\n(?P<q>.*?)\n(?:assert |""")', _S),
    # RouteLLM MMLU: stem and options, then "Answer:"
    re.compile(r"\A(?P<q>.*\nA\. .*)\nAnswer:\s*\Z", _S),
    # RouterArena: "[Context: <c>\n\n]Question: <q>\n\n[Options: \n<options>\n\n\n]Provide"
    re.compile(r"(?:\n\nContext: (?P<c>.*?))?\n\nQuestion: (?P<q>.*?)\n\n"
               r"(?:Options ?: ?\n?(?P<o>.*?)\n\n\n)?Provide", _S),
)
_YES_NO_MAYBE = "a yes b no c maybe"
Group = tuple[int, str]  # (table index, source): where a query id means one query


def normalise_key(text: str) -> str:
    """Case-folded words of ``text`` (Unicode letters and digits), single-spaced. Equals
    ``export.datasets.normalise_text`` on ASCII text."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def question_text(query: str) -> str:
    """The question inside a prompt of a known template, else the prompt."""
    for pattern in TEMPLATES:
        m = pattern.search(query)
        if m is None:
            continue
        found = m.groupdict()
        if normalise_key(found.get("o") or "") == _YES_NO_MAYBE:
            return found["q"]  # PubMedQA: the question alone, as in the other tables
        context = found.get("c") if (found.get("c") or "None").strip() != "None" else None
        return "\n".join(p for p in (context, found["q"], found.get("o")) if p)
    return query


def question_key(query: str) -> str:
    return normalise_key(question_text(query))


def infer_provenance(row: dict[str, Any]) -> tuple[str, str | None]:
    """(source, grader) of a row that lacks them: ids name the public tables; the cloud
    experts of a joined table came from RouteLLM (GSM8K) or RouterBench (ARC, MBPP);
    everything else was collected here and graded by our version-1 graders."""
    source = row.get("source")
    if not source:
        qid = str(row["query_id"])
        source = next((s for p, s in _ID_PREFIX.items() if qid.startswith(p)), None)
        if source is None and row["expert"] in _CLOUD:
            source = "routellm-gsm8k" if row["dataset"] == "gsm8k" else "routerbench"
        source = source or COLLECTED
    grader = row.get("grader")
    if not grader and row.get("correct") is not None:
        grader = (f"edgeroute-{row['dataset']}/1" if source == COLLECTED
                  else SOURCE_GRADERS.get(source))
    return source, grader


@dataclass
class PoolStats:
    """What pooling did, for the summary it prints."""

    rows_in: int = 0
    duplicates: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    shared_queries: int = 0  # questions found in more than one source
    merged_within: Counter[str] = field(default_factory=Counter)  # source -> extra ids
    splits: Counter[str] = field(default_factory=Counter)


def pool_rows(tables: Sequence[Iterable[dict[str, Any]]]) -> tuple[list[dict[str, Any]],
                                                                  PoolStats]:
    """Pool tables' rows (see the module docstring); returns the rows and the counts."""
    stats = PoolStats()
    ids: dict[str, tuple[str, Group]] = {}  # question key -> (pooled query_id, its group)
    prompts: dict[tuple[Group, str], str] = {}  # (group, normalised prompt) -> pooled id
    used: set[str] = set()
    sources: dict[str, set[str]] = {}
    originals: dict[tuple[str, Group], set[str]] = {}  # (pooled id, group) -> source ids
    splits: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    keys: dict[str, str] = {}  # prompt -> question key (a prompt repeats once per expert)
    aliases = ModelNames.of()
    experts: dict[str, str] = {}  # a table's expert name -> its canonical name
    out: list[dict[str, Any]] = []
    for t, table in enumerate(tables):
        for row in table:
            stats.rows_in += 1
            source, grader = infer_provenance(row)
            query = str(row["query"])
            key = keys.get(query) or keys.setdefault(query, question_key(query))
            group = (t, source)
            qid = _pooled_id(row, group, key, normalise_key(query), ids, prompts, used)
            expert = experts.get(row["expert"]) or experts.setdefault(
                row["expert"], aliases.canonical(row["expert"]) or row["expert"])
            sources.setdefault(qid, set()).add(source)
            originals.setdefault((qid, group), set()).add(str(row["query_id"]))
            if row.get("split"):
                splits.setdefault(qid, set()).add(row["split"])
            if (qid, expert) in seen:
                stats.duplicates[(source, row["dataset"], expert)] += 1
                continue
            seen.add((qid, expert))
            out.append(dict(row, query_id=qid, expert=expert, source=source, grader=grader))
    for r in out:
        given = splits.get(r["query_id"], set())
        r["split"] = "test" if "test" in given else "train" if "train" in given else None
    stats.shared_queries = sum(len(s) > 1 for s in sources.values())
    for (_qid, (_t, source)), names in originals.items():
        if len(names) > 1:
            stats.merged_within[source] += len(names) - 1
    stats.splits = Counter(str(s) for s in ({r["query_id"]: r["split"] for r in out}.values()))
    return out, stats


def _pooled_id(row: dict[str, Any], group: Group, key: str, prompt: str,
               ids: dict[str, tuple[str, Group]], prompts: dict[tuple[Group, str], str],
               used: set[str]) -> str:
    """Within a group (one source in one table) a normalised prompt is one query; across
    groups a question is."""
    qid = prompts.get((group, prompt))
    if qid is not None:
        return qid
    owner = ids.get(key)
    if owner is not None and owner[1] != group:
        qid = owner[0]
    else:  # a new question, or another prompt of this group with the same question
        qid = _fresh_id(str(row["query_id"]), used)
        ids.setdefault(key, (qid, group))
    prompts[(group, prompt)] = qid
    return qid


def _fresh_id(qid: str, used: set[str]) -> str:
    candidate, n = qid, 1
    while candidate in used:
        n += 1
        candidate = f"{qid}~{n}"
    used.add(candidate)
    return candidate


def pool_tables(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The pooled rows of the tables at ``paths`` (earlier tables win duplicates)."""
    from export.table import iter_rows

    rows, _stats = pool_rows([iter_rows(Path(p)) for p in paths])
    return rows


def stats_lines(stats: PoolStats) -> str:
    """What pooling dropped and merged, for under the summary table."""
    dropped = sum(stats.duplicates.values())
    lines = [
        f"{stats.rows_in} rows in; {dropped} duplicate (query, expert) rows dropped; "
        f"{stats.shared_queries} queries in more than one source; query splits: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.splits.items())) + "."
    ]
    for source, n in sorted(stats.merged_within.items()):
        lines.append(f"- {source}: {n} query ids are the same prompt as another id of theirs")
    for (source, dataset, expert), n in sorted(stats.duplicates.items()):
        lines.append(f"- duplicate dropped: {source} / {dataset} / {expert}: {n}")
    return "\n".join(lines)
