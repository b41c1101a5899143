"""``edgeroute table regrade``: grade every row of a table with our grader for its dataset,
so that ``correct`` means the same thing on every row of a dataset.

Per row, by its ``source`` (inferred for older tables, see ``export.pool``):

- ``collected``: graded again with our current grader (``export.metrics.GRADERS``) where
  its ``grader`` is an older version.
- ``routellm-gsm8k``: RouteLLM ships the response text and asked the same question, so the
  response is graded with our GSM8K grader (RouteLLM's own marks "$45.00" wrong for 45).
- ``zeroeval``: every reply (its staged tail) is graded with our grader for its dataset
  (GSM8K, CRUXEval, MATH), against our query of the same id.
- ``mmlu-pro``: the response is the letter the repository extracted (its replies were not
  staged); our MMLU-Pro grader reads it against the newest answer key, and a row where no
  letter was extracted is graded as a reply that states none.
- ``routerbench`` ARC: RouterBench shuffled the options differently from our prompt, so
  its answer letter means another option here. The letter is read against RouterBench's
  own options (from its prompt), that option's text is looked up among ours, and our
  letter is graded. A row whose option text is not among ours is dropped. The response
  (a letter in RouterBench's order) does not answer our prompt, so its BERTSim is cleared.
- ``routerbench`` MBPP: kept with RouterBench's label (grader ``routerbench/label``). Its
  prompt is the task text without a test, so the function name and signature are the
  model's own; our asserts call the names in our test. Run against our tests with the
  function name aliased, GPT-4's 150 joined replies agree with RouterBench's label on 108
  (72%): too noisy to call a re-grade.
- Rows with only a score (RouterDC) or of queries we have no grader for keep the source's
  score and grader.

Redistribution: rows from sources without a license file (the RouterBench slice, staged
from RouterDC's repository; RouterDC) keep their scores and lose their response text.

Idempotent: a row already graded by our current grader is left as it is, so a second run
changes nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.datasets import LOADERS, Query, load_dataset, normalise_text
from export.importers import _arc_stem, _literal, routerbench_rows
from export.metrics import GRADERS, LETTERS, arc_choice, grade, grade_gsm8k
from export.pool import COLLECTED, infer_provenance
from export.table_sources import MMLU_PRO, RB_DATASETS, UNLICENSED, ZEROEVAL

_OPTION = re.compile(r"(?m)^([A-E])\) (.*)$")
OUTCOMES = ("re-graded, same", "changed", "dropped", "kept source grader", "already current")


@dataclass
class RegradeCounts:
    """Rows per (dataset, expert) and outcome (see :data:`OUTCOMES`)."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, row: dict[str, Any], outcome: str) -> None:
        self.counts[(row["dataset"], row["expert"], outcome)] += 1

    def markdown(self) -> str:
        """Per (dataset, expert): rows, re-graded (changed or not), changed, dropped, kept
        with the source's grader, already graded by our current grader."""
        keys = sorted({(d, e) for d, e, _ in self.counts})
        lines = ["| dataset | expert | rows | re-graded | changed | dropped | kept source grader "
                 "| already current |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for d, e in keys:
            c = {o: self.counts[(d, e, o)] for o in OUTCOMES}
            cells = [sum(c.values()), c["re-graded, same"] + c["changed"], c["changed"],
                     c["dropped"], c["kept source grader"], c["already current"]]
            lines.append(f"| {d} | {e} | " + " | ".join(map(str, cells)) + " |")
        return "\n".join(lines)


def routerbench_arc_options(data_dir: Path) -> dict[str, list[str]]:
    """RouterBench ARC options (in its own order) by normalised question stem."""
    out: dict[str, list[str]] = {}
    for row, _split, _line, where in routerbench_rows(data_dir):
        if RB_DATASETS.get(row["eval_name"]) != "arc":
            continue
        prompt = _literal(row["prompt"], where)
        block = prompt.split("\n\n")[-1]
        out.setdefault(normalise_text(_arc_stem(prompt)),
                       [text.strip() for _l, text in _OPTION.findall(block)])
    return out


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def map_arc_answer(response: str, theirs: Sequence[str], ours: Sequence[str]) -> int | None:
    """Index in ``ours`` of the option a reply to ``theirs`` chose; -1 where it chose none;
    None where the chosen option's text is not among ours."""
    choice = arc_choice(response, theirs)
    if choice is None:
        return -1
    text = _words(theirs[choice])
    return next((i for i, c in enumerate(ours) if _words(str(c)) == text), None)


class Regrader:
    """Grades rows of one table; loads our datasets and RouterBench's options once."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._queries: dict[str, dict[str, Query]] = {}
        self._rb_arc: dict[str, list[str]] | None = None

    def query(self, row: dict[str, Any]) -> Query | None:
        """Our query behind a row (same id and dataset), loading its dataset once."""
        name = row["dataset"]
        if name not in GRADERS or name not in LOADERS:
            return None
        if name not in self._queries:
            self._queries[name] = {q.query_id: q for q in load_dataset(name, self.data_dir)}
        return self._queries[name].get(str(row["query_id"]))

    def rb_arc(self) -> dict[str, list[str]]:
        if self._rb_arc is None:
            self._rb_arc = routerbench_arc_options(self.data_dir)
        return self._rb_arc

    def row(self, row: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """(the row re-graded, or None if dropped; the outcome)."""
        source, grader = infer_provenance(row)
        out = dict(row, source=source, grader=grader)
        if source in UNLICENSED:
            out["response"] = None
        ours = GRADERS.get(row["dataset"])
        q = self.query(row)
        if ours is None or q is None or grader == ours:
            return out, "already current" if grader == ours else "kept source grader"
        response = row.get("response")
        if source == "routellm-gsm8k" and q.answer is not None and response is not None:
            new: float | None = grade_gsm8k(response, q.answer)
        elif source in (COLLECTED, ZEROEVAL) and response is not None:
            new = grade(q, response)
        elif source == MMLU_PRO:  # the extracted letter; none extracted states none
            new = grade(q, response or "")
        elif source == "routerbench" and q.dataset == "arc" and response is not None:
            theirs = self.rb_arc().get(normalise_text(q.source_text))
            mapped = (map_arc_answer(response, theirs, q.extra.get("choices", ()))
                      if theirs else None)
            if mapped is None:
                return None, "dropped"
            new = float(mapped >= 0 and LETTERS[mapped] == q.answer)
            out["bertsim"] = None
        else:
            return out, "kept source grader"
        out["correct"], out["grader"] = new, ours
        return out, "changed" if new != row.get("correct") else "re-graded, same"


def regrade_rows(rows: Sequence[dict[str, Any]], data_dir: Path
                 ) -> tuple[list[dict[str, Any]], RegradeCounts]:
    """Re-graded rows (dropped ones left out) and the counts per dataset and expert."""
    grader = Regrader(data_dir)
    counts = RegradeCounts()
    out = []
    for row in rows:
        new, outcome = grader.row(row)
        counts.add(row, outcome)
        if new is not None:
            out.append(new)
    return out, counts

