"""The daemon's ONNX router: verification, torch-free scoring, refusal, and hot swap.

Bundles come from a real BERT-Router trained and exported in this session
(tests/export/tiny_router.py); each test that damages one works on its own copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.errors import BundleError
from agent.router_bundle import OnnxRouter, RouterHolder
from tests.export.tiny_router import CHAT, CODE, EXPERTS, HARD, MAX_LENGTH, session_artifacts


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return session_artifacts(tmp_path_factory.getbasetemp() / "tiny-router")


@pytest.fixture()
def bundle(art: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(art["int8"], tmp_path / "bundle"))


def test_scores_are_a_distribution_that_follows_the_query(art: dict[str, Path]) -> None:
    router = OnnxRouter.load(art["int8"], list(reversed(EXPERTS)), threads=1)
    assert router.mode == "onnx" and router.experts == tuple(EXPERTS)
    for text, want in ((CODE[1], EXPERTS[0]), (CHAT[1], EXPERTS[1]), (HARD[0], EXPERTS[2])):
        scores = router.scores(text)
        assert set(scores) == set(EXPERTS)
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert max(scores, key=scores.__getitem__) == want, text
    info = router.describe()
    assert info["precision"] == "int8" and info["threads"] == 1 and info["experts"] == EXPERTS


def test_no_padding_and_truncation_to_the_bundle_length(art: dict[str, Path]) -> None:
    router = OnnxRouter.load(art["int8"], EXPERTS, threads=2)
    short = router.scorer.feeds("How do I sort a list?")["input_ids"]
    long = router.scorer.feeds("word " * 500)["input_ids"]
    assert short.shape[1] < 16 and int(short[0, -1]) != 0  # ends in [SEP], not [PAD]
    assert long.shape == (1, MAX_LENGTH)
    assert router.describe()["threads"] == 2


def test_daemon_process_imports_no_torch(art: dict[str, Path]) -> None:
    """Loading and scoring through build_router must not pull torch & co. into the daemon."""
    code = (
        "import sys, json\n"
        "from agent.runtime import build_router\n"
        "from agent.settings import Settings\n"
        f"s = Settings(router={{'bundle': {str(art['int8'])!r}, 'threads': 1}})\n"
        f"r = build_router(s, dict.fromkeys({EXPERTS!r}))\n"
        "r.scores('write a python function')\n"
        "heavy = ('torch', 'transformers', 'optimum')\n"
        "print(json.dumps([r.mode, sorted(m for m in sys.modules if m.split('.')[0] in heavy)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    mode, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert mode == "onnx" and heavy == []


def test_tampered_model_is_refused(bundle: Path) -> None:
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx sha256 .* does not match"):
        OnnxRouter.load(bundle, EXPERTS, threads=1)


def test_missing_file_and_missing_manifest_are_refused(bundle: Path) -> None:
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        OnnxRouter.load(bundle, EXPERTS, threads=1)
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        OnnxRouter.load(bundle, EXPERTS, threads=1)
    with pytest.raises(BundleError, match="is not a directory"):
        OnnxRouter.load(bundle / "nope", EXPERTS, threads=1)


def test_mismatched_experts_are_refused(art: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match=r"missing from bundle: \['gpt-4o'\]") as exc:
        OnnxRouter.load(art["int8"], [*EXPERTS[:2], "gpt-4o"], threads=1)
    assert "unknown: ['cloud-large']" in str(exc.value) and "\n" not in str(exc.value)


def test_bad_manifest_format_is_refused(bundle: Path) -> None:
    man = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**man, "format": 99}))
    with pytest.raises(BundleError, match="format 99"):
        OnnxRouter.load(bundle, EXPERTS, threads=1)


def test_start_up_refuses_a_bad_bundle_through_build_router(bundle: Path) -> None:
    from agent.runtime import build_router
    from agent.settings import Settings

    (bundle / "model.onnx").write_bytes(b"not a model")
    settings = Settings(router={"bundle": str(bundle)})
    with pytest.raises(BundleError, match="sha256"):
        build_router(settings, dict.fromkeys(EXPERTS))  # type: ignore[arg-type]


def test_holder_swaps_atomically_while_scoring(art: dict[str, Path], bundle: Path) -> None:
    holder = RouterHolder.load(art["int8"], EXPERTS, threads=1)
    int8_sha = holder.describe()["model_sha256"]
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def score_forever() -> None:
        while not stop.is_set():
            try:
                scores = holder.scores(CODE[0])
                seen.add(round(sum(scores.values())))
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                errors.append(exc)

    worker = threading.Thread(target=score_forever)
    worker.start()
    try:
        for target in (art["fp32"], art["int8"], art["fp32"]):
            holder.swap(target)
    finally:
        stop.set()
        worker.join()
    assert errors == [] and seen == {1}
    assert holder.swaps == 3 and holder.describe()["precision"] == "fp32"
    assert holder.describe()["model_sha256"] != int8_sha


def test_failed_swap_keeps_the_old_router_serving(art: dict[str, Path], bundle: Path) -> None:
    holder = RouterHolder.load(art["int8"], EXPERTS, threads=1)
    before = holder.current
    (bundle / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError):
        holder.swap(bundle)
    assert holder.current is before and holder.swaps == 0
    assert set(holder.scores(HARD[0])) == set(EXPERTS)
    holder.swap()  # re-reads the path it serves (the intact one)
    assert holder.current is not before and holder.swaps == 1


def test_sighup_reloads_the_bundle_from_disk(art: dict[str, Path], bundle: Path) -> None:
    """The daemon's SIGHUP handler (agent.app) swaps in the bundle replaced on disk."""
    import asyncio
    import os
    import signal

    from agent.app import install_sighup_reload

    holder = RouterHolder.load(bundle, EXPERTS, threads=1)
    shutil.copyfile(art["fp32"] / "model.onnx", bundle / "model.onnx")  # bundle swapped on disk
    shutil.copyfile(art["fp32"] / "manifest.json", bundle / "manifest.json")

    async def main() -> None:
        undo = install_sighup_reload(holder.swap)
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(600):
                if holder.swaps:
                    return
                await asyncio.sleep(0.05)
        finally:
            undo()

    asyncio.run(main())
    assert holder.swaps == 1 and holder.describe()["precision"] == "fp32"
