"""What every router bundle export shares: its config (``ExportConfig``, built from the
``edgeroute export`` flags in one place), the queries its int8 gates run on (``EvalSet``),
and the writer that puts the bundle folder in place with its manifest.

A leaf below both exporters: ``export.onnx_export`` (BERT routers, and the ``edgeroute
export`` stage that picks the exporter) and ``export.irt_export`` (``irt`` routers) import
it, and it imports neither.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.routers.base import RouterMeta

log = logging.getLogger("edgeroute.export")


@dataclass(frozen=True)
class ExportConfig:
    """One export: a trained router folder in, a bundle folder out (see ``--help``)."""

    router: Path
    out: Path
    table: Path | None = None  # gates on the router's test split of this table ...
    queries: Path | None = None  # ... or on these queries (agreement only)
    target: str | None = None  # int8 config; None: this machine's
    keep_fp32: tuple[str, ...] = ()
    precision: str = "int8"
    exporter: str = "auto"
    opset: int = 18
    fuse: bool = True
    min_agreement: float = 0.99
    max_quality_loss: float = 0.01
    max_eval: int = 0  # 0: all
    threads: int = 2


class EvalSet:
    """Queries to compare fp32 and int8 on; ``quality`` (queries x experts, higher is
    better, NaN where unknown) when they come from an expert table."""

    def __init__(self, queries: list[str], source: str,
                 quality: np.ndarray | None = None, note: str = "") -> None:
        if not queries:
            raise ExportError(f"no evaluation queries in {source}; the gates need some")
        self.queries = queries
        self.source = source
        self.quality = quality
        self.note = note


def load_eval_set(cfg: ExportConfig, meta: RouterMeta) -> EvalSet:
    limit = cfg.max_eval if cfg.max_eval and cfg.max_eval > 0 else None
    if cfg.table is not None:
        ev = _table_eval_set(Path(cfg.table), meta)
    elif cfg.queries is not None:
        ev = EvalSet(_read_queries(Path(cfg.queries)), "query-list")
    else:
        raise ExportError("give --table (the router's expert table: gates on its test "
                          "split) or --queries (a query list) to check the int8 model")
    if limit is not None and len(ev.queries) > limit:
        q = ev.quality[:limit] if ev.quality is not None else None
        ev = EvalSet(ev.queries[:limit], ev.source, q, ev.note + f" first {limit} only")
    return ev


def _table_eval_set(table: Path, meta: RouterMeta) -> EvalSet:
    """The router's own test split (``held_out``, as evaluate and calibrate use it)."""
    from export.held_out import held_out
    from export.labels import table_sha256

    split = held_out(table, meta)
    note = ""
    if meta.table_sha256 and table_sha256(table) != meta.table_sha256:
        note = "table differs from the router's training table (sha256); split may differ"
        log.warning("%s: %s", table, note)
    return EvalSet(split.test.queries, "table-test-split", split.values, note)


def _read_queries(path: Path) -> list[str]:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise ExportError(f"cannot read query list {path} ({exc})") from exc
    if path.suffix != ".jsonl":
        return lines
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append(str(json.loads(line)["query"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ExportError(f"{path}:{n}: expected a JSON object with 'query'") from exc
    return out


def versions() -> dict[str, str | None]:
    """The versions of what made the bundle, for its manifest's provenance."""
    out: dict[str, str | None] = {}
    for dist in ("onnxruntime", "tokenizers", "transformers", "optimum", "optimum-onnx",
                 "torch", "onnx", "edgeroute"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def write_bundle(stage: Path, meta: RouterMeta, provenance: dict[str, Any],
                 out: Path) -> dict[str, Any]:
    """Write the staged files' manifest (``BundleManifest``), then move the folder into
    place; returns the manifest as written.

    An existing ``out`` is replaced only if it is a bundle (has a manifest.json), so a
    typo cannot wipe an unrelated folder."""
    from agent.router_bundle import MANIFEST_NAME, BundleManifest

    manifest = BundleManifest.create(stage, experts=meta.experts, metric=meta.metric,
                                     max_length=meta.max_length, provenance=provenance)
    manifest.write()
    if out.exists():
        if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
            raise ExportError(f"{out} exists and is not a router bundle; choose another --out")
        old = stage.parent / "previous"
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old)
    else:
        stage.rename(out)
    return manifest.raw
