"""A GGUF's own chat template: the prompt tokens a local model answers after.

Rendered as llama-cpp-python's chat handler renders it (its ``Jinja2ChatFormatter`` over
``tokenizer.chat_template``, with the model's BOS and EOS texts) and tokenized with special
tokens parsed. One place for both readers of it: the batch engine generates after these
tokens (``agent/experts/batching.py``) and the pipeline's NLL scorer scores answers after
the same tokens (``export/metrics.py``), so the confidence the daemon reports while
generating and the one the pipeline computes by teacher forcing see the same prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ChatTemplate:
    """The chat template of one loaded ``llama_cpp.Llama``. Build with :meth:`of`."""

    def __init__(self, llama: Any, template: str) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = llama.metadata
        self._llama = llama
        self.eos_text = self._token_text(llama, meta.get("tokenizer.ggml.eos_token_id"))
        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=self.eos_text,
            bos_token=self._token_text(llama, meta.get("tokenizer.ggml.bos_token_id")))
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token") == "true"

    @classmethod
    def of(cls, llama: Any) -> ChatTemplate | None:
        """The model's template, or None for a GGUF without one."""
        template = llama.metadata.get("tokenizer.chat_template")
        return cls(llama, template) if template else None

    @staticmethod
    def _token_text(llama: Any, token_id: str | None) -> str:
        if not token_id:
            return ""
        return bytes(llama.detokenize([int(token_id)], special=True)).decode("utf-8", "replace")

    @property
    def stop(self) -> tuple[str, ...]:
        """Text that ends an answer besides an end-of-generation token: the EOS token's
        text, as llama-cpp-python's handler adds it to a request's stop strings."""
        return (self.eos_text,) if self.eos_text else ()

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text: every message, then the assistant's generation prompt."""
        return str(self._formatter(messages=list(messages)).prompt)  # type: ignore[arg-type]

    def tokens(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The prompt's tokens (BOS only where the GGUF asks for one)."""
        text = self.render(messages).encode("utf-8")
        return list(self._llama.tokenize(text, add_bos=self._add_bos, special=True))
