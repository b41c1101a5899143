"""Model files: builtin GGUFs assemble and verify; bad files are clear start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ModelFileError
from agent.model_files import BUILTINS, resolve_model, sha256_file, verify_file
from agent.settings import QWEN_DEFAULT


def test_qwen_assembles_to_pinned_hash(qwen_gguf: Path) -> None:
    assert sha256_file(qwen_gguf) == BUILTINS[QWEN_DEFAULT].sha256 == (
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    with qwen_gguf.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_smollm_hash_is_pinned(smollm_gguf: Path) -> None:
    from agent.settings import SMOLLM2_DEFAULT

    assert sha256_file(smollm_gguf) == BUILTINS[SMOLLM2_DEFAULT].sha256


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="nope.gguf"):
        resolve_model(str(tmp_path / "nope.gguf"), None, tmp_path)


def test_not_a_gguf_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "fake.gguf"
    f.write_bytes(b"<html>not a model</html>")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        verify_file(f, None)


def test_corrupt_file_fails_pinned_hash(tmp_path: Path, smollm_gguf: Path) -> None:
    from agent.settings import SMOLLM2_DEFAULT

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
