"""The MMLU-Pro table (``routing-mmlu-pro/``): 31 models' 5-shot chain-of-thought answers
to the 12,032 MMLU-Pro test questions, as expert-table rows.

Rows: one per (question, model), on our MMLU-Pro queries (``export.datasets.load_mmlu_pro``:
the newest revision of each question, in MMLU-Pro's own prompt without its five worked
examples, ids ``mmlupro-<question_id>``). ``expert`` is the model's canonical profile name
(``agent.model_names``).

The repository's replies were not staged, only the letter its regexes extracted: that
letter is the row's ``response`` (null where it extracted none), so ``table regrade`` grades
it like any reply, against the newest answer key. There are no output lengths:
``output_tokens`` is null (``input_tokens`` estimates our zero-shot prompt, shorter than the
5-shot one the models saw).

``correct`` as the source has it (``grader`` ``mmlu-pro/label``): the letter against the
answer key in that model's own file, a null letter wrong.

Revised questions. The dataset changed while results were collected: 48 questions differ
between files (33 gold letters, 11 option lists, 7 texts), and the outcomes do not say which
version a file held. Rows of those questions are kept only for the files that hold the
newest revision (:data:`NEWEST_REVISION`); the other files' rows of them (1,344) are left
out, since their letter may refer to another option list than the one our prompt shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.model_names import ModelNames
from export.datasets import MMLU_PRO_LETTERS, iter_jsonl, load_dataset
from export.errors import DatasetError
from export.table_sources import MMLU_PRO, SOURCE_GRADERS, estimate_tokens, expert_name

# The files whose records are the newest revision of every question (SOURCE.md).
NEWEST_REVISION = frozenset({"jamba-1.5-large", "gemini-1.5-pro-002", "gemini-1.5-flash-002"})


def import_mmlu_pro(data_dir: Path) -> Iterator[dict[str, Any]]:
    """Rows of ``outcomes.jsonl.gz`` in file order (see the module docstring)."""
    queries = {int(q.extra["question_id"]): q for q in load_dataset("mmlu-pro", data_dir)}
    path = data_dir / "routing-mmlu-pro" / "outcomes.jsonl.gz"
    names = ModelNames.of()
    experts: dict[str, str] = {}  # the table's model name -> canonical
    for line, obj in iter_jsonl(path):
        where = f"{path}:{line}"
        qid = obj.get("question_id")
        q = queries.get(qid) if isinstance(qid, int) else None
        model, pred = str(obj.get("model")), obj.get("pred")
        if q is None or obj.get("correct") not in (0, 1) or (
                pred is not None and pred not in MMLU_PRO_LETTERS):
            raise DatasetError(f"{where}: needs a known 'question_id', a 0/1 'correct' and a "
                               f"letter or null 'pred'")
        if q.extra["revisions"] > 1 and model not in NEWEST_REVISION:
            continue
        if model not in experts:
            experts[model] = expert_name(model, names)
        yield {
            "query_id": q.query_id, "dataset": "mmlu-pro", "split": None, "query": q.prompt,
            "reference": None, "expert": experts[model], "response": pred,
            "correct": float(obj["correct"]), "input_tokens": estimate_tokens(q.prompt),
            "output_tokens": None, "source": MMLU_PRO, "grader": SOURCE_GRADERS[MMLU_PRO],
        }
