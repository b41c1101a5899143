"""``hf:OWNER/REPO/FILE.gguf`` models, offline: a Hugging Face cache pre-populated with the
builtin SmolLM2 GGUF (no hub is reachable here), ``HF_HUB_OFFLINE=1``, and the real
``huggingface_hub`` reading it. The CLI runs as a user runs it (subprocesses); the daemon
loads its expert through the same ``build_runtime`` as ``edgeroute serve``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.errors import ModelFileError
from agent.model_refs import HubRef, parse_ref
from tests.agent.test_cli import run_cli
from tests.conftest import free_port

REPO_ID = "edgeroute-test/SmolLM2-135M-Instruct-GGUF"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REF = f"hf:{REPO_ID}/{FILENAME}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class HubCache:
    root: Path
    snapshot_file: Path
    sha256: str
    env: dict[str, str]


def populate_hub_cache(root: Path, repo_id: str, filename: str, source: Path, sha256: str,
                       revision: str = "main") -> Path:
    """The layout ``hf_hub_download`` leaves behind: the LFS blob named by its sha256, a
    snapshot folder per commit with a relative symlink to the blob, and refs/<revision>
    holding the commit. (huggingface_hub has no API that fills its cache offline.) The
    blob is a symlink to ``source`` so no 98 MB copy is made."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha256).symlink_to(source)
    snapshot = repo / "snapshots" / COMMIT / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("..", "..", "blobs", sha256))
    (repo / "refs").mkdir()
    (repo / "refs" / revision).write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, smollm_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> HubCache:
    """An offline hub cache holding REF; the process (and subprocesses, through ``env``)
    sees HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it."""
    import huggingface_hub.constants as hf_constants

    from agent.model_files import BUILTINS
    from agent.settings import SMOLLM2_DEFAULT

    sha = BUILTINS[SMOLLM2_DEFAULT].sha256
    root = tmp_path / "hf-hub"
    snapshot = populate_hub_cache(root, REPO_ID, FILENAME, smollm_gguf, sha)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root),
           # Our own cache dir (verified stamps) in the test's tmp dir, not the shared one.
           "EDGEROUTE_PATHS__CACHE_DIR": str(tmp_path / "cache")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # huggingface_hub reads these at import; an in-process test needs them current too.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root))
    return HubCache(root, snapshot, sha, env)


def test_hand_made_cache_is_what_huggingface_hub_reads(hub_cache: HubCache) -> None:
    """Guards the fixture: the library's own cache scanner accepts the layout."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    info = scan_cache_dir(hub_cache.root)
    assert not info.warnings, info.warnings
    assert [r.repo_id for r in info.repos] == [REPO_ID]
    assert try_to_load_from_cache(REPO_ID, FILENAME, cache_dir=hub_cache.root) == str(
        hub_cache.snapshot_file)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (REF, HubRef(REPO_ID, FILENAME)),
        (f"{REF}@v1.0", HubRef(REPO_ID, FILENAME, "v1.0")),
        ("hf:a/b/sub/dir/m.GGUF", HubRef("a/b", "sub/dir/m.GGUF")),
        (f"{REF}@refs/pr/3", HubRef(REPO_ID, FILENAME, "refs/pr/3")),
    ],
)
def test_parse_ref(text: str, expected: HubRef) -> None:
    assert parse_ref(text) == expected
    assert parse_ref(str(expected)) == expected


@pytest.mark.parametrize(
    "bad", ["hf:nofile", "hf:owner/repo", "hf:owner/repo/model.bin", "hf:/repo/m.gguf",
            "hf:o/r/../m.gguf", "hf:o/r/m.gguf@"],
)
def test_bad_reference_names_the_value(bad: str) -> None:
    with pytest.raises(ModelFileError, match="bad model reference") as info:
        parse_ref(bad)
    assert repr(bad) in str(info.value)


def _one_line_error(r, *needles: str) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_reference_is_one_line_on_the_cli(hub_cache: HubCache) -> None:
    _one_line_error(run_cli("pull", "hf:nofile", env=hub_cache.env, timeout=60), "'hf:nofile'")
    experts = json.dumps([{"name": "x", "model": "hf:nofile"}])
    line = _one_line_error(run_cli("serve", env={**hub_cache.env,
                                                "EDGEROUTE_LOCAL_EXPERTS": experts}),
                           "'hf:nofile'")
    assert "local_experts.0.model" in line


def test_pull_from_the_cache_offline_prints_the_path(hub_cache: HubCache) -> None:
    r = run_cli("pull", REF, env=hub_cache.env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(hub_cache.snapshot_file) in r.stdout
    assert hub_cache.sha256 in r.stdout
    r = run_cli("pull", REF, "--sha256", hub_cache.sha256, "--revision", "main",
                env=hub_cache.env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert str(hub_cache.snapshot_file) in r.stdout


def test_pull_refuses_a_sha256_mismatch(hub_cache: HubCache) -> None:
    r = run_cli("pull", REF, "--sha256", "0" * 64, env=hub_cache.env, timeout=120)
    _one_line_error(r, "sha256", hub_cache.sha256, "0" * 64, REF)


@pytest.mark.parametrize(
    ("ref", "repo", "file"),
    [
        (f"hf:{REPO_ID}/missing.Q8_0.gguf", REPO_ID, "missing.Q8_0.gguf"),
        ("hf:tensoropera/Fox-1-1.6B-Instruct-v0.1-GGUF/Fox-1-1.6B-Instruct-v0.1-Q4_K_M.gguf",
         "tensoropera/Fox-1-1.6B-Instruct-v0.1-GGUF", "Fox-1-1.6B-Instruct-v0.1-Q4_K_M.gguf"),
        (f"{REF}@v2", REPO_ID, FILENAME),  # cached at main only
    ],
)
def test_missing_file_offline_is_one_line(hub_cache: HubCache, ref: str, repo: str,
                                          file: str) -> None:
    line = _one_line_error(run_cli("pull", ref, env=hub_cache.env, timeout=60),
                           f"repository {repo}", f"file {file}", "HF_HUB_OFFLINE")
    experts = json.dumps([{"name": "fox", "model": ref}])
    start = _one_line_error(
        run_cli("serve", env={**hub_cache.env, "EDGEROUTE_LOCAL_EXPERTS": experts,
                              "EDGEROUTE_ROUTER__BUNDLE": "none"}, timeout=60))
    assert start == line  # the daemon's start-up error is the same line


def test_doctor_fails_a_missing_hub_file(hub_cache: HubCache) -> None:
    experts = json.dumps([
        {"name": "smol", "model": REF, "sha256": hub_cache.sha256},
        {"name": "fox", "model": f"hf:{REPO_ID}/missing.gguf"},
    ])
    r = run_cli("doctor", "--json", env={**hub_cache.env, "EDGEROUTE_LOCAL_EXPERTS": experts,
                                         "EDGEROUTE_ROUTER__BUNDLE": "none"}, timeout=120)
    report = json.loads(r.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert r.returncode == 1 and not report["ok"]
    assert checks["model smol"]["status"] == "ok", checks["model smol"]
    assert str(hub_cache.snapshot_file) in checks["model smol"]["detail"]
    fox = checks["model fox"]
    assert fox["status"] == "error"
    assert f"repository {REPO_ID}" in fox["detail"] and "missing.gguf" in fox["detail"]


def test_doctor_fails_a_pinned_hash_mismatch(hub_cache: HubCache) -> None:
    from agent.doctor import check_model
    from agent.expert_settings import LocalExpertSettings

    expert = LocalExpertSettings(name="smol", model=REF, sha256="0" * 64)
    finding = check_model(expert, Path(hub_cache.env["EDGEROUTE_PATHS__CACHE_DIR"]),
                          rehash=False)
    assert finding.status == "error" and "sha256" in finding.detail


def test_resolve_refuses_a_sha256_mismatch(hub_cache: HubCache) -> None:
    from agent.model_files import resolve_model

    cache = Path(hub_cache.env["EDGEROUTE_PATHS__CACHE_DIR"])
    with pytest.raises(ModelFileError, match=f"expected {'0' * 64}") as info:
        resolve_model(REF, "0" * 64, cache)
    assert REF in str(info.value)
    assert resolve_model(REF, hub_cache.sha256, cache) == hub_cache.snapshot_file
    stamps = list((cache / "models" / "verified").iterdir())
    assert len(stamps) == 1  # the verified stamp lives in our cache, not the hub's
    assert sorted(p.name for p in hub_cache.snapshot_file.parent.iterdir()) == [FILENAME]


def test_daemon_with_a_hub_expert_loads_and_answers(hub_cache: HubCache) -> None:
    from agent.settings import Settings
    from tests.agent.conftest import running_daemon

    settings = Settings(
        server={"port": free_port()},
        local_experts=[{"name": "smol-hub", "model": REF, "sha256": hub_cache.sha256,
                        "n_ctx": 512, "n_threads": 1}],
        router={"bundle": "none"},
    )
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with running_daemon(settings) as url:
        resp = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "auto", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hi"}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["expert"] == "smol-hub"
    assert body["choices"][0]["message"]["content"].strip()
