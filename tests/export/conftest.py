"""Fixtures of the pipeline's tests: a shared data dir cut down to a few real rows."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _copy(src: Path, dst: Path, lines: int, keep: str = "") -> None:
    """The first ``lines`` lines of ``src`` that hold ``keep``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rt", encoding="utf-8") as f, gzip.open(dst, "wt", encoding="utf-8") as g:
        g.writelines(line for _, line in zip(range(lines), (t for t in f if re.search(keep, t)),
                                             strict=False))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared data dir with the first items of ZeroEval's three tasks (every model's
    row of each) and MMLU-Pro's outcomes of questions 70, 71, 86 and 94 (94 was revised)."""
    root = tmp_path_factory.mktemp("data")
    for name in ("gsm8k", "routing-mmlu-pro/questions.jsonl.gz"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(SHARED / name)
    for task, lines in (("gsm", 84), ("crux", 96), ("math-l5", 80)):  # 2 items each
        _copy(SHARED / "routing-zeroeval" / f"{task}.jsonl.gz",
              root / "routing-zeroeval" / f"{task}.jsonl.gz", lines)
    _copy(SHARED / "routing-mmlu-pro" / "outcomes.jsonl.gz",
          root / "routing-mmlu-pro" / "outcomes.jsonl.gz", 124, r'"question_id": (70|71|86|94),')
    return root
