"""The expert table: one row per (query, expert), the hand-off between all pipeline stages.

Format version 1. JSONL (``.jsonl`` or ``.jsonl.gz``; Parquet ``.parquet`` with pyarrow),
one JSON object per line, these columns (missing values are ``null``):

| column | type | meaning |
| --- | --- | --- |
| query_id | str | stable id of the query, unique within the table |
| dataset | str | source dataset (arc, gsm8k, mbpp, pubmedqa, or the user's) |
| split | str or null | "train" / "test", or null to let the trainer split |
| query | str | the instruction prompt the expert saw |
| reference | str or null | the reference answer |
| expert | str | expert name |
| response | str or null | the expert's answer |
| bertsim | float or null | cosine similarity of MiniLM embeddings of response and reference |
| nll | float or null | negative log-likelihood (nats, summed) of the reference under the expert |
| correct | float or null | 1.0/0.0 where the dataset has an exact answer (or a soft score) |
| latency_s | float or null | wall time of the call |
| input_tokens | int or null | prompt tokens |
| output_tokens | int or null | generated tokens |
| cost_usd | float or null | USD at the expert's prices |
| source | str or null | ``collected`` (by ``edgeroute collect``) or the public table |
| grader | str or null | what set ``correct``, as ``name/version`` |
| mean_logprob | float or null | local rows: mean log-probability (nats) of the answer's tokens |
| min_logprob | float or null | local rows: the least of those token log-probabilities |
| check | float or null | 1.0/0.0: the reply passes its dataset's reference-free check (see below) |

``source`` names a public table as ``edgeroute table import`` does: ``routerbench``,
``routellm-gsm8k``, ``routellm-mmlu``, ``routerdc``, ``routerarena``. ``grader`` is one of
ours (``edgeroute-arc/2``; see ``export.metrics.GRADERS``) or the source's own
(``routerdc/soft-score``).

``source`` and ``grader`` say whether two rows' ``correct`` mean the same thing: a router
trained across tables should see one grader per dataset, or know that it does not. Tables
written before these columns existed read them as null.

``mean_logprob``/``min_logprob`` are the cascade's confidence signal (issue #18): the
daemon gets the same numbers for free while a local model generates
(``cloud_bridge.wire.AnswerConfidence``). ``edgeroute collect`` records them by scoring the
response under its model after the prompt (teacher forcing, the NLL scorer's pass);
``edgeroute table confidence`` adds them to a table's stored local responses the same way,
without regenerating. Cloud rows leave them null. ``check`` needs no reference answer
(``export.metrics.answer_check``): ARC states an option letter; GSM8K states a number;
PubMedQA states a decision; MBPP's code runs (definitions only, no asserts).

A first line ``{"_edgeroute_table": 1, ...}`` is an optional header (format version and
free-form provenance); readers skip it.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from export.errors import PipelineError, TableError

FORMAT_VERSION = 1
COLUMNS: tuple[str, ...] = (
    "query_id", "dataset", "split", "query", "reference", "expert", "response", "bertsim",
    "nll", "correct", "latency_s", "input_tokens", "output_tokens", "cost_usd", "source",
    "grader", "mean_logprob", "min_logprob", "check",
)
REQUIRED: tuple[str, ...] = ("query_id", "dataset", "query", "expert")
FLOAT_COLUMNS = ("bertsim", "nll", "correct", "latency_s", "cost_usd", "mean_logprob",
                 "min_logprob", "check")
INT_COLUMNS = ("input_tokens", "output_tokens")


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8")


def normalise_row(row: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Check and coerce one row to the format; raise TableError naming what is wrong."""
    missing = [c for c in REQUIRED if row.get(c) in (None, "")]
    if missing:
        raise TableError(f"{where}missing required column(s) {missing}")
    out: dict[str, Any] = {c: row.get(c) for c in COLUMNS}
    for c in FLOAT_COLUMNS:
        v = out[c]
        if v is not None:
            try:
                f = float(v)
            except (TypeError, ValueError) as exc:
                raise TableError(f"{where}column {c!r} is not a number: {v!r}") from exc
            out[c] = None if math.isnan(f) else f
    for c in INT_COLUMNS:
        v = out[c]
        if v is not None:
            try:
                out[c] = int(v)
            except (TypeError, ValueError) as exc:
                raise TableError(f"{where}column {c!r} is not an integer: {v!r}") from exc
    for c in ("query_id", "dataset", "expert"):
        out[c] = str(out[c])
    for c in ("source", "grader"):
        if out[c] is not None:
            out[c] = str(out[c])
    return out


def json_objects(
    lines: Iterable[str], path: Path, error: type[PipelineError]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank JSON line; a bad line raises ``error`` naming
    ``path:line``. Shared by the table and dataset readers."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise error(f"{path}:{lineno}: expected a JSON object per line")
        yield lineno, obj


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a table file, validated; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"table {path} does not exist")
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
        return
    try:
        with _open_text(path, "r") as f:
            for lineno, obj in json_objects(f, path, TableError):
                if "_edgeroute_table" in obj:
                    continue
                yield normalise_row(obj, f"{path}:{lineno}: ")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read table ({exc})") from exc


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise TableError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
        yield normalise_row(row, f"{path}: row {i}: ")


def read_header(path: Path) -> dict[str, Any] | None:
    """The provenance header of a JSONL table (without the format key), or None."""
    path = Path(path)
    if path.suffix == ".parquet" or not path.is_file():
        return None
    try:
        with _open_text(path, "r") as f:
            first = f.readline()
        obj = json.loads(first) if first.strip() else None
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict) or "_edgeroute_table" not in obj:
        return None
    return {k: v for k, v in obj.items() if k != "_edgeroute_table"}


def read_table(path: Path) -> list[dict[str, Any]]:
    rows = list(iter_rows(path))
    if not rows:
        raise TableError(f"table {path} has no rows")
    return rows


def write_table(
    path: Path, rows: Iterable[dict[str, Any]], header: dict[str, Any] | None = None
) -> int:
    """Write rows atomically (temp file + rename). Returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    norm = [normalise_row(r) for r in rows]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.Table.from_pylist(norm), tmp)
        tmp.replace(path)
        return len(norm)
    tmp = path.with_name(path.name + ".tmp" + (".gz" if path.suffix == ".gz" else ""))
    with _open_text(tmp, "w") as f:
        f.write(json.dumps({"_edgeroute_table": FORMAT_VERSION, **(header or {})}) + "\n")
        for r in norm:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(norm)
