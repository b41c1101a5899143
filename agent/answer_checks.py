"""Reference-free checks of one answer: weak evidence of whether it is right, computed on
the device from the question and the answer alone (no reference answer, no model call).

The pipeline's per-dataset checks (``export.metrics.answer_check``, the cascade's cheap
verifier) know each dataset's answer form; a user's query comes with no dataset, so a check
here applies only where the query or the answer shows its form:

- ``choice``: the question lists lettered options (``A) ...`` / ``(B) ...`` / ``C. ...``, at
  least three): the answer passes when it states one of those letters.
- ``code``: the answer holds a fenced Python block: it passes when every block parses
  (``ast``), or, with ``run_code``, when its definitions run in a fresh isolated interpreter
  (``python -I``, 10 s, no asserts: model-written code then runs on this device).

Neither says the answer is right, only that it has the shape a right one has; their outcomes
count for less in a refit (``outcomes.check_weight``). Pure but for ``run_code``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["choice", "code"]

_OPTION = re.compile(r"(?:^|\s|\n)\(?([A-J])[).:]\s+\S")
_PHRASE = re.compile(r"answer\s*(?:is|:)?\s*[:\-]?\s*\(?([A-J])\b\)?", re.I)
_LEAD = re.compile(r"\s*\(?([A-J])\)?(?:[).:\s]|$)")
_FENCE = re.compile(r"```(python|py)?[^\n]*\n(.*?)(?:```|$)", re.S)
RUN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CheckResult:
    kind: Kind
    score: float  # 1.0 passed, 0.0 failed


def options(question: str) -> set[str]:
    """The option letters a question lists (an empty set: not multiple choice). Letters
    must run A, B, C... without a gap, so a stray "I. " is no option list."""
    found = set(_OPTION.findall(question))
    letters = "ABCDEFGHIJ"
    run = 0
    while run < len(letters) and letters[run] in found:
        run += 1
    return set(letters[:run]) if run >= 3 else set()


def stated_option(answer: str, allowed: set[str]) -> str | None:
    """The option the answer states: its last 'answer is X', else a leading 'X)' or 'X'."""
    phrases = [m.group(1).upper() for m in _PHRASE.finditer(answer)]
    phrases = [p for p in phrases if p in allowed]
    if phrases:
        return phrases[-1]
    lead = _LEAD.match(answer)
    if lead and lead.group(1) in allowed:
        return lead.group(1)
    return None


def python_blocks(answer: str) -> list[str]:
    """Fenced code blocks marked python (or unmarked ones that parse as Python)."""
    blocks = []
    for m in _FENCE.finditer(answer):
        if m.group(1) or _parses(m.group(2)):
            blocks.append(m.group(2))
    return blocks


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def runs(code: str, timeout_s: float = RUN_TIMEOUT_S) -> bool:
    """Whether ``code`` runs to the end in a fresh isolated Python, in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="edgeroute-check-") as tmp:
        script = Path(tmp) / "answer.py"
        script.write_text(code, encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0


def check(question: str, answer: str, *, run_code: bool = False) -> CheckResult | None:
    """The check that applies to this question and answer, or None (no check applies)."""
    letters = options(question)
    if letters:
        return CheckResult("choice", float(stated_option(answer, letters) is not None))
    blocks = python_blocks(answer)
    if blocks:
        code = "\n\n".join(blocks)
        ok = _parses(code) and (not run_code or runs(code))
        return CheckResult("code", float(ok))
    return None
