"""Final answers of reasoning replies, and the graders that compare them with a gold answer:
CRUXEval output prediction, MATH, MMLU-Pro.

The replies of the public tables end in a stated answer in one of a few shapes: ZeroEval
asked for JSON (``{"reasoning": ..., "answer": ...}``), MATH solutions box it
(``\\boxed{...}``), MMLU-Pro's prompt asks for "the answer is (X)". A grader here reads the
last such statement, so a reply cut to its tail (ZeroEval keeps the last 1,500 characters)
still grades, and our own experts' replies to the same prompts grade by the same rules.

- CRUXEval (``edgeroute-cruxeval/1``): CRUXEval runs ``assert <gold> == <prediction>``
  after the function; both are literals, so that is Python equality of
  ``ast.literal_eval`` of both (``[1, 2] == [1,2]``, ``'a' == "a"``, ``1 == 1.0``). No code
  runs. ZeroEval's JSON makes a string answer ambiguous (its instruction's example is
  ``"answer": "42"``): ``"2"`` may be the literal ``2`` or the string ``'2'``, so a JSON
  string is right if one of its readings equals the gold (:func:`_string_readings`).
- MATH (``edgeroute-math/1``): the normalised answer strings are equal, the normalisation
  of the standard MATH equivalence check (Hendrycks et al.'s ``is_equiv``: spaces,
  ``\\left``/``\\right``, ``\\!``, ``dfrac``/``tfrac``, ``\\text{}`` units, degrees,
  percent, ``x = 5``, ``\\frac12``, ``a/b`` as ``\\frac{a}{b}``) plus thousands separators,
  units in words ("47 feet"), an "answer:" prefix, a trailing ``.0``, equal values of
  decimals and integer fractions (``0.5`` = ``\\frac{1}{2}``), and a base subscript
  (``1112112_3`` = ``1112112_{3}`` = ``1112112``, the question asking for base 3). No other
  algebra: ``(3)`` is not ``3``, ``2\\sqrt{2}`` not ``\\sqrt{8}``.
- MMLU-Pro (``edgeroute-mmlu-pro/1``): the letter (A-J) the reply states. MMLU-Pro's own
  extraction falls back to the last capital letter anywhere in a reply ("I think ..."
  gives I); that fallback is left out.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

_JSON_ANSWER = re.compile(r"""(?:"answer"|'answer')\s*:\s*""", re.I)
_NO_VALUE = object()


# -- reading a stated answer -------------------------------------------------------------
def _json_string(text: str, start: int) -> str | None:
    """The raw characters of the JSON string opening at ``text[start]``, escapes kept."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return text[start + 1 : i]
        i += 1
    return None


def json_answer(text: str) -> tuple[str, bool] | None:
    """(raw value, whether it was a JSON string) of the reply's last ``"answer": ...``.

    A string's escapes are kept as written: LaTeX in JSON (``"\\frac{1}{2}"``) is rarely
    valid JSON, and decoding it would turn ``\\f`` into a form feed. Other values run to the
    end of the JSON value, or of the line where it is not valid JSON (``[(1, 2)]``)."""
    for m in reversed(list(_JSON_ANSWER.finditer(text))):
        rest = text[m.end():]
        if rest.startswith('"'):
            raw = _json_string(text, m.end())
            if raw is not None:
                return raw, True
            continue
        try:
            _value, end = json.JSONDecoder().raw_decode(rest)
            return rest[:end], False
        except json.JSONDecodeError:
            line = rest.split("\n", 1)[0].strip().rstrip(",").strip()
            line = line[:-1].rstrip() if line.endswith("}") and "{" not in line else line
            if line:
                return line, False
    return None


def _unescape_latex(raw: str) -> str:
    """A JSON string's LaTeX as meant: ``\\\\`` is one backslash, ``\\"`` a quote; other
    escapes (``\\frac``, ``\\times``) were LaTeX commands written into JSON unescaped."""
    return re.sub(r'\\([\\"/])', r"\1", raw)


def _boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced), or of
    ``\\boxed 5``."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text)]
    for m in reversed(starts):
        if m.group(1) is None:
            word = re.match(r"\s*([^\s$]+)", text[m.end():])
            if word:
                return word.group(1)
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[m.end() : i - 1]
    return None


_STATED = re.compile(r"(?i)(?:final answer|answer)\s*(?:is|:)\s*:?\s*(.+)")


def _stated(text: str) -> str | None:
    """What follows the last "answer is" / "Answer:" on its line, without a closing full
    stop or dollar signs."""
    found = list(_STATED.finditer(text))
    if not found:
        return None
    value = found[-1].group(1).strip().rstrip(".").strip().strip("$").strip()
    return value or None


# -- CRUXEval ----------------------------------------------------------------------------
def _literal(text: str) -> Any:
    with warnings.catch_warnings():  # "invalid decimal literal" and the like: not literals
        warnings.simplefilter("ignore", SyntaxWarning)
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return _NO_VALUE


def _string_readings(text: str) -> list[Any]:
    """What a JSON string answer may mean: the Python literal it spells (``"[4]"``, ``"'a'"``),
    the string itself (``"2"`` for ``'2'``), or the inside of a string literal, escapes
    read (``"a\\tb"`` for ``'a\tb'``)."""
    readings = [_literal(text), text]
    if "'" not in text:
        readings.append(_literal(f"'{text}'"))
    return [r for r in readings if r is not _NO_VALUE]


def cruxeval_readings(response: str) -> list[Any]:
    """The outputs a reply predicts, as Python values (more than one where a JSON string is
    ambiguous, see :func:`_string_readings`); empty for none. Read from the last JSON
    answer, else CRUXEval's ``[ANSWER] ... [/ANSWER]``, else the last
    ``assert f(...) == <literal>``, else the last ``\\boxed{}`` or "answer is <literal>"."""
    found = json_answer(response)
    if found is not None:
        raw, is_string = found
        if is_string:
            try:
                text = json.loads(f'"{raw}"')
            except json.JSONDecodeError:
                text = _unescape_latex(raw)
            return _string_readings(text)
        value = _literal(raw)
        if value is _NO_VALUE:
            try:
                value = json.loads(raw)  # true, false, null
            except json.JSONDecodeError:
                return []
        return [value]
    tagged = re.findall(r"\[ANSWER\](.*?)\[/ANSWER\]", response, re.S)
    asserts = re.findall(r"(?m)^\s*assert\s+f\(.*\)\s*==\s*(.+?)\s*$", response)
    code = tagged[-1] if tagged else asserts[-1] if asserts else None
    if code is not None:  # Python: a literal or nothing
        value = _literal(code.rsplit("==", 1)[-1] if "assert" in code else code)
        return [] if value is _NO_VALUE else [value]
    stated = _boxed(response) or _stated(response)  # prose: quoted or not, as JSON
    return [] if stated is None else _string_readings(_boxed(stated) or stated)


def grade_cruxeval(response: str, gold: str) -> float:
    """1.0 if a predicted output equals the gold literal (Python ``==``)."""
    expected = _literal(gold)
    if expected is _NO_VALUE:
        return 0.0
    return float(any(bool(v == expected) for v in cruxeval_readings(response)))


# -- MATH --------------------------------------------------------------------------------
def math_answer(response: str) -> str | None:
    r"""The final answer a reply states: its last JSON answer (the box inside it, if any),
    else its last ``\boxed{}``, else its last "answer is ..."."""
    found = json_answer(response)
    if found is not None:
        raw, is_string = found
        value = _unescape_latex(raw) if is_string else raw
        return _boxed(value) or value
    return _boxed(response) or _stated(response)


_TEXT = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf)\s*\{([^{}]*)\}")
_NUMBER_THEN_WORDS = re.compile(r"^(-?[\d.,]+)\s+[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*$")  # 47 feet
_ANSWER_PREFIX = re.compile(r"(?i)^(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*:?\s*")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _fix_fracs(s: str) -> str:
    r"""``\frac12`` -> ``\frac{1}{2}``, ``\frac1{2}`` -> ``\frac{1}{2}``."""
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)


def normalise_math(answer: str) -> str:
    """An answer string in the form two equal answers share (see the module docstring)."""
    s = answer.strip().replace("\u2212", "-").replace("\n", " ")
    s = re.sub(r"\\[()\[\]]", "", s).replace("$", "").strip().rstrip(".").strip()
    s = _boxed(s) or s
    for old, new in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "),
                     ("~", " "), ("\\left", ""), ("\\right", ""), ("tfrac", "frac"),
                     ("dfrac", "frac"), ("^{\\circ}", ""), ("^\\circ", ""),
                     ("\u00b0", ""), ("\\%", ""), ("%", ""), ("{,}", ","),
                     ("\\displaystyle", "")):
        s = s.replace(old, new)
    s = re.sub(r"(\d)\s*" + _TEXT.pattern + r"\s*$", r"\1", s)  # 5 \text{ cm}: units
    s = _ANSWER_PREFIX.sub("", _TEXT.sub(r"\1", s).strip())  # \text{answer: 12}
    m = _NUMBER_THEN_WORDS.match(s)
    s = m.group(1) if m else s
    if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=")[1]  # "x = 5", "k=5"
    s = s.replace(" ", "")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    s = rf"\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)
    s = re.sub(r"^\.(\d)", r"0.\1", s)
    return re.sub(r"_\{(\w+)\}$", r"_\1", s)


def _number(s: str) -> float | None:
    """The value of a plain decimal (not ``float``'s wider syntax: ``1_3``, ``inf``) or of
    a fraction of integers (``-\\frac{3}{4}``), else None."""
    if re.fullmatch(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", s):
        return float(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", s)
    if m is None or int(m.group(3)) == 0:
        return None
    return (-1 if m.group(1) else 1) * int(m.group(2)) / int(m.group(3))


def math_equal(predicted: str, gold: str) -> bool:
    """Equal after :func:`normalise_math`, as values (decimals, integer fractions), or as
    digits in the base a subscript names (``1112112_3`` and ``1112112``)."""
    a, b = normalise_math(predicted), normalise_math(gold)
    if a == b:
        return True
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return abs(na - nb) <= 1e-9 * max(1.0, abs(nb))
    based = re.fullmatch(r"(\w+)_(\d+)", b)
    return based is not None and a in (based.group(1), f"{based.group(1)}_{based.group(2)}")


def grade_math(response: str, gold: str) -> float:
    """1.0 if the reply's final answer (:func:`math_answer`) equals ``gold``."""
    answer = math_answer(response)
    return float(answer is not None and math_equal(answer, gold))


# -- MMLU-Pro ----------------------------------------------------------------------------
LETTERS_10 = "ABCDEFGHIJ"
_MP_RULES = (
    re.compile(r"(?i:answer\s+is)\s*:?\s*\**\s*\(?([A-J])\b"),
    re.compile(r"[aA]nswer\s*:\s*\**\s*\(?([A-J])\b"),
    re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}"),
)
_MP_ONLY = re.compile(r"^\W*\(?([A-J])(?:[).:]|\s*$)")


def mmlu_pro_letter(response: str, n_options: int = 10) -> str | None:
    r"""The letter a reply states: its last "answer is (X)", else its last "Answer: X",
    else its last ``\boxed{X}``, else a reply that opens with "X)" / "(X)" / "X." or is
    the letter alone; None where none, or where the letter is past the last option."""
    text = response.strip()
    for rule in _MP_RULES:
        found = rule.findall(text)
        if found:
            letter = found[-1]
            break
    else:
        m = _MP_ONLY.match(text)
        letter = m.group(1) if m else None
    return letter if letter is not None and LETTERS_10.index(letter) < n_options else None


def grade_mmlu_pro(response: str, letter: str, n_options: int = 10) -> float:
    return float(mmlu_pro_letter(response, n_options) == letter)
