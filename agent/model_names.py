"""Which shipped profile a model name means: the names users type, as data.

A configured expert names its model the way its provider or file does: ``gpt-4o``,
``openai/gpt-4o``, ``claude-3-5-sonnet@20240620`` (Vertex),
``meta-llama/Llama-3.1-8B-Instruct``, ``Meta-Llama-3.1-8B-Instruct.Q4_K_M.gguf``,
``hf:Qwen/Qwen2.5-3B-Instruct-GGUF/qwen2.5-3b-instruct-q4_k_m.gguf``. A profile is named
once, by its canonical name (the public table's model, as the pipeline writes it into
``expert``). Two things bridge them:

- :func:`name_key`, a normaliser: it drops what never changes which model it is: a path or
  provider prefix (``openai/``, ``models/``), ``builtin:``/``hf:``, the ``.gguf`` suffix
  and split-file part, a quantisation suffix (``-Q4_K_M``, ``.q5_k_m``, ``-q4``, ``-fp16``),
  a ``-GGUF`` repository suffix, case, and the separators and letter/digit boundaries
  (``3.1`` = ``3_1``, ``llama3`` = ``llama-3``).
- :data:`ALIASES`, the table: canonical name -> the other names of that same model. Only
  names of the same weights belong here, or a moving alias that points at them today
  (``gpt-4o`` -> ``gpt-4o-2024-08-06``, ``gemini-1.5-pro`` -> ``-002``). ``-instruct``,
  ``-it`` and ``-chat`` are never dropped by the normaliser (base and tuned models differ),
  so short tags such as Ollama's ``llama3.1:8b`` (the instruct model) are left out: they
  normalise like the base model's name ``Llama-3.1-8B``.

The canonical names follow the existing shipped profiles: an API model keeps its
provider's dated id (``gpt-4o-2024-08-06``), an open-weights model its Hugging Face id
(``meta-llama/Meta-Llama-3.1-70B-Instruct``). Where one model was served by several
providers and measured apart, the others carry ``@provider`` (Llama-3.1-405B).

A leaf module: the daemon resolves profiles with it (``agent.profiles.resolve``), the
pipeline names experts with it (``export.zeroeval``, ``export.mmlu_pro``, ``export.pool``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

# canonical profile name -> other names of the same model (the normaliser covers case,
# separators, org prefixes, quantisation and file suffixes; list what it cannot derive).
_LLAMA31 = "meta-llama/Meta-Llama-3.1-"
ALIASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # OpenAI
    ("gpt-4o-2024-08-06", ("gpt-4o",)),
    ("gpt-4o-2024-05-13", ()),
    ("gpt-4o-mini-2024-07-18", ("gpt-4o-mini",)),
    ("chatgpt-4o-latest-2024-09-07", ("chatgpt-4o-latest-24-09-07",)),
    ("o1-mini-2024-09-12", ("o1-mini",)),
    ("o1-preview-2024-09-12", ("o1-preview",)),
    ("gpt-4-turbo-2024-04-09", ("gpt-4-turbo",)),
    ("gpt-4-0314", ()),
    ("gpt-3.5-turbo-0125", ("gpt-3.5-turbo",)),
    ("gpt-4-1106-preview", ()),
    # Anthropic (Bedrock and Vertex spell them their own way)
    ("claude-3-5-sonnet-20240620", ("anthropic.claude-3-5-sonnet-20240620-v1:0",)),
    ("claude-3-opus-20240229", ("anthropic.claude-3-opus-20240229-v1:0", "claude-3-opus")),
    ("claude-3-sonnet-20240229", ("anthropic.claude-3-sonnet-20240229-v1:0",)),
    ("claude-3-haiku-20240307", ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku")),
    # Google. ZeroEval's undated gemini-1.5-pro/-flash ran before 2024-09-24, when those
    # names meant -001; today they mean -002, which MMLU-Pro measured.
    ("gemini-1.5-pro-002", ("gemini-1.5-pro", "gemini-1.5-pro-latest", "gemini-pro-1.5")),
    ("gemini-1.5-flash-002", ("gemini-1.5-flash", "gemini-1.5-flash-latest",
                              "gemini-flash-1.5")),
    ("gemini-1.5-pro-001", ()),
    ("gemini-1.5-flash-001", ()),
    ("gemini-1.5-pro-exp-0801", ()),
    ("gemini-1.5-pro-exp-0827", ()),
    ("gemini-1.5-flash-exp-0827", ()),
    ("google/gemma-2-27b-it", ()),
    ("google/gemma-2-9b-it", ()),
    ("google/gemma-2-2b-it", ()),
    ("google/gemma-7b", ()),
    # Meta (Hugging Face dropped "Meta-" from the 3.1 repositories)
    (f"{_LLAMA31}405B-Instruct", ("meta-llama/Llama-3.1-405B-Instruct",
                                  "Llama-3.1-405B-Inst@sambanova")),
    (f"{_LLAMA31}405B-Instruct@hyperbolic", ("Llama-3.1-405B-Inst@hyperbolic",)),
    (f"{_LLAMA31}405B-Instruct-Turbo", ("Llama-3.1-405B-Inst-fp8@together",)),  # FP8
    (f"{_LLAMA31}70B-Instruct", ("meta-llama/Llama-3.1-70B-Instruct",)),
    (f"{_LLAMA31}70B-Instruct@hyperbolic", ("Meta-Llama-3.1-70B-Instruct@hyperbolic",)),
    (f"{_LLAMA31}8B-Instruct", ("meta-llama/Llama-3.1-8B-Instruct",)),
    (f"{_LLAMA31}70B", ("meta-llama/Llama-3.1-70B",)),
    (f"{_LLAMA31}8B", ("meta-llama/Llama-3.1-8B",)),
    ("meta-llama/Meta-Llama-3-70B-Instruct", ()),
    ("meta-llama/Meta-Llama-3-8B-Instruct", ()),
    ("meta-llama/Meta-Llama-3-70B", ()),
    ("meta-llama/Meta-Llama-3-8B", ()),
    ("meta-llama/Llama-2-70b-hf", ()),
    ("meta-llama/Llama-2-13b-hf", ()),
    ("meta-llama/Llama-2-7b-hf", ()),
    # Mistral
    ("mistralai/Mistral-Large-Instruct-2407", ("mistral-large-2407", "Mistral-Large-2")),
    ("mistralai/Mistral-Nemo-Instruct-2407", ("open-mistral-nemo-2407",)),
    ("mixtral-8x7b-instruct", ("mistralai/Mixtral-8x7B-Instruct-v0.1",
                               "mistralai/mixtral-8x7b-chat")),
    ("mistralai/Mixtral-8x7B-v0.1", ()),
    ("mistralai/Mistral-7B-v0.1", ()),
    ("mistral-community/Mistral-7B-v0.2", ("Mistral-7B-v0.2-hf",)),
    ("mistralai/Mistral-7B-Instruct-v0.2", ()),
    ("mistralai/Mistral-7B-Instruct-v0.1", ()),
    ("mistralai/Mathstral-7B-v0.1", ("mathstral-7B",)),
    # Qwen
    ("Qwen/Qwen2.5-72B-Instruct", ()),
    ("Qwen/Qwen2.5-32B-Instruct", ()),
    ("Qwen/Qwen2.5-7B-Instruct", ()),
    ("Qwen/Qwen2.5-3B-Instruct", ()),
    ("Qwen/Qwen2-72B-Instruct", ()),
    ("Qwen/Qwen2-7B-Instruct", ()),
    ("Qwen/Qwen1.5-110B", ()),
    ("Qwen/Qwen1.5-72B-Chat", ()),
    ("Qwen/Qwen1.5-7B-Chat", ()),
    # DeepSeek
    ("deepseek-ai/DeepSeek-V2.5", ("deepseek-v2.5-0908", "deepseek-v2.5")),
    ("deepseek-ai/DeepSeek-V2-Chat-0628", ("deepseek-v2-chat-0628",)),
    ("deepseek-ai/DeepSeek-V2-Chat", ()),
    ("deepseek-ai/DeepSeek-Coder-V2-Instruct", ("deepseek-v2-coder-0614",)),
    ("deepseek-ai/DeepSeek-Coder-V2-Instruct-0724", ("deepseek-v2-coder-0724",)),
    ("DeepSeek-Coder-V2", ()),  # MMLU-Pro's, its checkpoint not stated
    # Microsoft
    ("microsoft/Phi-3-mini-4k-instruct", ()),
    ("microsoft/Phi-3.5-mini-instruct", ()),
    # others
    ("Nexusflow/Athene-70B", ()),
    ("CohereForAI/c4ai-command-r-v01", ("command-r-03-2024",)),
    ("command-r", ()),  # Cohere's API name when ZeroEval ran it, version not stated
    ("command-r-plus", ()),
    ("ai21labs/AI21-Jamba-1.5-Large", ("jamba-1.5-large",)),
    ("reka-core-20240501", ()),
    ("reka-flash-20240226", ()),
    ("yi-large", ()),
    ("yi-large-preview", ()),
    ("01-ai/Yi-1.5-34B-Chat", ()),
    ("01-ai/Yi-1.5-9B-Chat", ()),
    ("01-ai/Yi-34B", ()),
    ("01-ai/Yi-6B-Chat", ()),
    ("01-ai/Yi-6B", ()),
)

_QUANT = re.compile(
    r"[-._](?:i?q[1-8](?:_[a-z0-9]+)*|f16|f32|bf16|fp16|fp32|fp8|int4|int8|gguf|ggml|awq|"
    r"gptq(?:[-_]int[48])?|[48]bit)$", re.I)
_LOSSLESS = frozenset({"f16", "f32", "bf16", "fp16", "fp32", "gguf", "ggml"})
_SPLIT_PART = re.compile(r"-\d{5}-of-\d{5}$")
_TOKEN = re.compile(r"[a-z]+|\d+")


def _base(model: str) -> str:
    """The model's own name: no scheme, path, revision, file suffix or split part."""
    s = model.strip()
    for scheme in ("builtin:", "hf:"):
        s = s[len(scheme):] if s.lower().startswith(scheme) else s
    s = re.sub(r"(?i)(\.gguf)@[^/]*$", r"\1", s)  # hf:...gguf@revision
    s = re.split(r"[/\\]", s)[-1]
    s = s[: -len(".gguf")] if s.lower().endswith(".gguf") else s
    return _SPLIT_PART.sub("", s)


def quantisation(model: str) -> str | None:
    """The quantisation a model file or id names (``Q4_K_M``, ``q4``, ``fp16``), or None;
    a lossy one before a marker such as ``-GGUF``."""
    s, found = _base(model), []
    while (m := _QUANT.search(s)) is not None:
        found.append(m.group(0)[1:])
        s = s[: m.start()]
    return next((q for q in found if is_lossy(q)), found[0] if found else None)


def is_lossy(quant: str | None) -> bool:
    return quant is not None and quant.lower() not in _LOSSLESS


def name_key(model: str) -> str:
    """The normalised name: two references to one model by the rules in the module
    docstring give the same key."""
    s = _base(model)
    while (m := _QUANT.search(s)) is not None:
        s = s[: m.start()]
    return " ".join(_TOKEN.findall(s.casefold()))


@dataclass(frozen=True)
class ModelNames:
    """Normalised name -> canonical name, for every canonical name and alias."""

    index: Mapping[str, str]

    @classmethod
    def of(cls, table: Iterable[tuple[str, Iterable[str]]] = ALIASES) -> ModelNames:
        """The index of an alias table; two models whose names normalise alike are an
        error in the table (a name would mean either)."""
        index: dict[str, str] = {}
        for canonical, aliases in table:
            for name in (canonical, *aliases):
                key = name_key(name)
                if index.get(key, canonical) != canonical:
                    raise ValueError(f"model name {name!r} means both {index[key]!r} and "
                                     f"{canonical!r}")
                index[key] = canonical
        return cls(MappingProxyType(index))

    def canonical(self, model: str) -> str | None:
        """The canonical name ``model`` refers to, or None if the table lacks it."""
        return self.index.get(name_key(model))
