"""The names users type for a model: the normaliser's invariants (property tests) and the
alias table on the names of issue #28."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.model_names import ALIASES, ModelNames, is_lossy, name_key, quantisation

# (what a user types, the profile it means): issue #28's examples and their neighbours
TYPED = [
    ("gpt-4o", "gpt-4o-2024-08-06"),
    ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),
    ("openai/gpt-4o", "gpt-4o-2024-08-06"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("o1-mini", "o1-mini-2024-09-12"),
    ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20240620"),
    ("anthropic/claude-3.5-sonnet-20240620", "claude-3-5-sonnet-20240620"),
    ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet-20240620"),  # Vertex
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-3-5-sonnet-20240620"),  # Bedrock
    ("gemini-1.5-pro-002", "gemini-1.5-pro-002"),
    ("models/gemini-1.5-pro-002", "gemini-1.5-pro-002"),
    ("gemini-1.5-pro", "gemini-1.5-pro-002"),  # the moving alias, as it points today
    ("meta-llama/Meta-Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct"),
    ("meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct"),
    ("Meta-Llama-3_1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct"),  # MMLU-Pro
    ("Qwen2.5-3B-Instruct-Q4_K_M.gguf", "Qwen/Qwen2.5-3B-Instruct"),
    ("qwen2.5-7b-instruct-q5_k_m.gguf", "Qwen/Qwen2.5-7B-Instruct"),
    ("qwen2.5-7b-instruct-q5_k_m-00001-of-00002.gguf", "Qwen/Qwen2.5-7B-Instruct"),
    ("hf:Qwen/Qwen2.5-3B-Instruct-GGUF/qwen2.5-3b-instruct-q4_k_m.gguf@main",
     "Qwen/Qwen2.5-3B-Instruct"),
    ("/opt/models/Meta-Llama-3.1-8B-Instruct.Q4_K_M.gguf",
     "meta-llama/Meta-Llama-3.1-8B-Instruct"),
    ("Llama-3.1-8B-Instruct-Q6_K_L.gguf", "meta-llama/Meta-Llama-3.1-8B-Instruct"),
    ("gemma-2-2b-it-Q6_K.gguf", "google/gemma-2-2b-it"),
    ("Phi-3-mini-4k-instruct-q4.gguf", "microsoft/Phi-3-mini-4k-instruct"),
    ("Phi-3-mini-4k-instruct-fp16.gguf", "microsoft/Phi-3-mini-4k-instruct"),
    ("mixtral-8x7b-instruct-v0.1.Q4_K_M.gguf", "mixtral-8x7b-instruct"),
    ("mistralai/mixtral-8x7b-chat", "mixtral-8x7b-instruct"),  # RouterBench's name
]
# names that must not resolve to a tuned model's profile: base models, other sizes
NOT = ["Qwen2.5-3B", "gemma-2-2b", "meta-llama/Llama-3.1-8B-Instruct-Turbo", "gpt-4",
       "claude-3-5-sonnet-20241022", "Qwen2.5-1.5B-Instruct-Q4_K_M.gguf"]


@pytest.mark.parametrize("typed,canonical", TYPED)
def test_typed_names_resolve_to_the_tables_model(typed: str, canonical: str) -> None:
    assert ModelNames.of().canonical(typed) == canonical


@pytest.mark.parametrize("typed", NOT)
def test_other_models_do_not_resolve_to_a_neighbour(typed: str) -> None:
    found = ModelNames.of().canonical(typed)
    assert found is None or name_key(found) == name_key(typed)  # only a base model's own


def test_quantisation_is_read_and_lossless_ones_are_told_apart() -> None:
    assert quantisation("Qwen2.5-3B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quantisation("Meta-Llama-3.1-8B-Instruct.Q4_K_M.gguf") == "Q4_K_M"
    assert quantisation("Phi-3-mini-4k-instruct-q4.gguf") == "q4"
    assert quantisation("x-IQ3_XXS-00001-of-00003.gguf") == "IQ3_XXS"
    assert quantisation("Qwen2.5-7B-Instruct-Q8_0-GGUF") == "Q8_0"  # before the marker
    assert quantisation("gpt-4o") is None
    assert is_lossy("Q4_K_M") and is_lossy("q4") and is_lossy("fp8")
    assert not is_lossy("fp16") and not is_lossy("BF16") and not is_lossy(None)


def test_alias_table_names_each_model_once() -> None:
    names = ModelNames.of()
    canonicals = [c for c, _aliases in ALIASES]
    assert len(canonicals) == len(set(canonicals))
    assert all(names.canonical(c) == c for c in canonicals)
    with pytest.raises(ValueError, match="means both"):
        ModelNames.of([("org/Model-7B", ()), ("model-7b-GGUF", ())])


# -- properties of the normaliser -------------------------------------------------------
_WORD = st.from_regex(r"[A-Za-z]{2,8}|[0-9]{1,3}[bBkK]?|v[0-9]\.[0-9]", fullmatch=True)
_QUANTS = ["Q4_K_M", "Q5_K_S", "Q8_0", "Q4_0", "Q2_K", "Q6_K", "IQ3_XXS", "IQ4_NL", "q4",
           "f16", "bf16", "fp16"]


@st.composite
def model_names(draw: st.DrawFn) -> str:
    """A model name: words and sizes joined by '-', never ending in a quantisation tag."""
    words = draw(st.lists(_WORD, min_size=1, max_size=6))
    name = "-".join(words)
    if quantisation(name) is not None or name.lower().endswith(("gguf", "ggml")):
        name += "-Instruct"
    return name


def _recase(name: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c.lower() for c, f in zip(name, flips + [False] * len(name),
                                                                 strict=False))


@given(model_names(), st.lists(st.booleans(), max_size=80))
def test_case_does_not_matter(name: str, flips: list[bool]) -> None:
    assert name_key(_recase(name, flips)) == name_key(name)


@given(model_names(), st.sampled_from(_QUANTS), st.sampled_from("-._"), st.booleans())
def test_quantisation_suffix_and_file_suffix_do_not_matter(name: str, quant: str, sep: str,
                                                           lower: bool) -> None:
    q = quant.lower() if lower else quant
    file = f"{name}{sep}{q}.gguf"
    assert name_key(file) == name_key(name)
    assert quantisation(file) == q
    assert name_key(f"{name}-GGUF") == name_key(name)


@given(model_names(), st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True))
def test_provider_or_path_prefix_does_not_matter(name: str, org: str) -> None:
    assert name_key(f"{org}/{name}") == name_key(name)
    assert name_key(f"/opt/models/{org}/{name}.gguf") == name_key(name)
    assert name_key(f"hf:{org}/{name}-GGUF/{name}-Q4_K_M.gguf@main") == name_key(name)


@given(model_names(), st.sampled_from(["_", ".", " "]))
def test_separators_do_not_matter(name: str, sep: str) -> None:
    assert name_key(name.replace("-", sep)) == name_key(name)


@given(model_names(), st.sampled_from(["Instruct", "it", "chat", "Base", "Coder"]))
def test_what_tells_models_apart_is_kept(name: str, suffix: str) -> None:
    assert name_key(f"{name}-{suffix}") != name_key(name)


@given(st.text(max_size=60))
def test_the_key_is_its_own_key(text: str) -> None:
    key = name_key(text)
    assert name_key(key) == key and key == key.strip()
