"""A file's sha256, read in 1 MiB blocks: what pins a GGUF model (``agent.model_files``,
``edgeroute pull``, ``doctor``) and each file of a router bundle's manifest
(``agent.router_bundle``). A leaf: both read it, neither owns it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
