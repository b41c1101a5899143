"""What a local expert's ``model`` setting can name: a builtin model (``builtin:NAME``), a
Hugging Face Hub file (``hf:OWNER/REPO/FILE.gguf[@REVISION]``), or a GGUF path.

A leaf: the settings validate a reference with it, ``agent.hub_models`` fetches what it
names and ``agent.model_files`` resolves it to a verified file, and none of them has to
import another to know what a reference is. It imports nothing of the daemon but its errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import ModelFileError

BUILTIN_PREFIX = "builtin:"
HF_PREFIX = "hf:"
QWEN_DEFAULT = f"{BUILTIN_PREFIX}qwen2.5-coder-0.5b-instruct"
SMOLLM2_DEFAULT = f"{BUILTIN_PREFIX}smollm2-135m-instruct"
EXAMPLE = "hf:tensoropera/Fox-1-1.6B-Instruct-v0.1-GGUF/Fox-1-1.6B-Instruct-v0.1-Q4_K_M.gguf"
_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_REF = re.compile(
    rf"hf:(?P<repo>{_NAME}/{_NAME})/(?P<file>[^@\s]+\.gguf)(?:@(?P<rev>[^\s]+))?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HubRef:
    """One GGUF file of one Hugging Face model repository, at a revision (None: main)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}/{self.filename}{rev}"

    def describe(self) -> str:
        """For messages: 'file F of repository R (revision V)'."""
        rev = f" at revision {self.revision}" if self.revision else ""
        return f"file {self.filename} of repository {self.repo_id}{rev}"


def is_hub_ref(model: str) -> bool:
    return model.startswith(HF_PREFIX)


def is_builtin(model: str) -> bool:
    return model.startswith(BUILTIN_PREFIX)


def parse_ref(text: str) -> HubRef:
    """``hf:OWNER/REPO/PATH/FILE.gguf[@REVISION]`` to a HubRef; anything else is a one-line
    ModelFileError naming the value."""
    m = _REF.fullmatch(text.strip())
    if m is None or ".." in m["file"].split("/") or m["file"].startswith("/"):
        raise ModelFileError(
            f"bad model reference {text!r}: write hf:OWNER/REPO/FILE.gguf[@REVISION], "
            f"e.g. {EXAMPLE}"
        )
    return HubRef(m["repo"], m["file"], m["rev"])
