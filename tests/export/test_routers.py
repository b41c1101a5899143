"""Routers learn what the labels say; baselines behave as defined; the on-disk contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.labels import LabelSpec, build_matrix, metric_values, soft_labels, split_indices
from export.routers import baselines
from export.routers.base import RouterMeta
from export.routers.kinds import KINDS, load_router, read_meta
from export.routers.training import FitConfig
from tests.export.test_labels import synthetic_rows


def _data(
    n: int, best: dict[str, str]
) -> tuple[RouterMeta, list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    m = build_matrix(synthetic_rows(n, best=best))
    labels, mask = soft_labels(metric_values(m, LabelSpec(metric="bertsim")), 0.1)
    train, test = split_indices(m, seed=0)
    meta = RouterMeta(
        kind="mlp",
        experts=m.experts,
        metric="bertsim",
        temperature=0.1,
        seed=0,
        table_sha256="x",
        train_queries=len(train),
        datasets=["code", "math"],
        max_length=32,
        label_spec=LabelSpec().__dict__,
    )
    return meta, m.queries, labels, mask, train, test


ALWAYS_MID = {"math": "mid", "code": "mid"}


def test_mlp_learns_the_always_best_expert(tmp_path: Path) -> None:
    from export.routers.mlp import train_mlp

    meta, queries, labels, mask, train, test = _data(25, ALWAYS_MID)
    cfg = FitConfig(epochs=30, lr=1e-2, batch_size=16, seed=0, threads=1, progress=False)
    router, _ = train_mlp(meta, queries, labels, mask, train, np.array([], dtype=int), cfg)
    picks = np.array(router.experts)[router.score_batch([queries[i] for i in test]).argmax(axis=1)]
    assert set(picks) == {"mid"}
    router.save(tmp_path / "r")
    again = load_router(tmp_path / "r")
    assert np.allclose(again.score_batch(queries[:3]), router.score_batch(queries[:3]))


def test_mlp_separates_datasets_and_is_deterministic() -> None:
    from export.routers.mlp import train_mlp

    meta, queries, labels, mask, train, test = _data(25, {"math": "big", "code": "small"})
    cfg = FitConfig(epochs=40, lr=1e-2, batch_size=16, seed=1, threads=1, progress=False)
    a, _ = train_mlp(meta, queries, labels, mask, train, np.array([], dtype=int), cfg)
    b, _ = train_mlp(meta, queries, labels, mask, train, np.array([], dtype=int), cfg)
    sa = a.score_batch([queries[i] for i in test])
    assert np.array_equal(sa, b.score_batch([queries[i] for i in test]))
    want = ["big" if queries[i].startswith("math") else "small" for i in test]
    assert list(np.array(a.experts)[sa.argmax(axis=1)]) == want


@pytest.mark.parametrize("layers", [None, 2])
def test_tiny_bert_learns_the_always_best_expert_and_keeps_the_contract(
    tmp_path: Path, layers: int | None
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from export.routers.bert import train_bert

    meta, queries, labels, mask, train, test = _data(20, ALWAYS_MID)  # 40 queries
    meta.kind = "bert"
    cfg = FitConfig(epochs=1, lr=2e-3, batch_size=8, seed=0, threads=2, progress=False,
                    layers=layers)
    router, log = train_bert(meta, queries, labels, mask, train, np.array([], dtype=int), cfg)
    assert log["history"][0]["train_loss"] > 0
    assert router.layers == (layers or 6)
    router.save(tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "hf" / "config.json").read_text())
    assert saved["num_hidden_layers"] == (layers or 6)
    picks = np.array(router.experts)[router.score_batch([queries[i] for i in test]).argmax(axis=1)]
    assert set(picks) == {"mid"}
    # The exporter's view: router.json + hf/ reproduce the scores on their own.
    info = json.loads((tmp_path / "b" / "router.json").read_text())
    assert {
        "format",
        "kind",
        "experts",
        "metric",
        "temperature",
        "max_length",
        "seed",
        "table_sha256",
        "train_queries",
        "datasets",
    } <= set(info)
    assert info["kind"] == "bert" and info["experts"] == list(router.experts)
    hf = tmp_path / "b" / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(hf).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    assert type(model).__name__ == "BertForSequenceClassification"
    import torch

    with torch.no_grad():
        logits = model(
            **tok(queries[0], truncation=True, max_length=info["max_length"], return_tensors="pt")
        ).logits
    assert np.allclose(
        torch.softmax(logits, -1).numpy()[0], router.score_batch([queries[0]])[0], atol=1e-5
    )


def test_knn_lends_the_nearest_training_label() -> None:
    from export.routers.knn import KnnRouter

    meta = RouterMeta(
        kind="knn",
        experts=["a", "b"],
        metric="bertsim",
        temperature=0.1,
        seed=0,
        table_sha256="x",
        train_queries=2,
        datasets=["d"],
    )
    emb = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    r = KnnRouter(meta, emb, np.array([[0.9, 0.1], [0.2, 0.8]]))
    got = r.score_embeddings(np.array([[0.1, 0.99], [0.8, 0.6]], dtype=np.float32))
    assert np.allclose(got, [[0.2, 0.8], [0.9, 0.1]])


def test_knn_breaks_a_neighbours_tie_toward_the_expert_best_in_training(tmp_path) -> None:
    """Three training queries: the nearest one was answered right by both experts (a tie);
    ``b`` was the only right one on the other two, so ``b`` wins the tie, whatever the
    order of the names, and the tie-break survives save and load."""
    from export.routers.knn import KnnRouter, train_knn

    for names in (["a", "b"], ["b", "a"]):
        meta = RouterMeta(kind="knn", experts=names, metric="correct", temperature=0.1,
                          seed=0, table_sha256="x", train_queries=3, datasets=["d"])
        b = names.index("b")
        labels = np.zeros((3, 2))
        labels[0] = 0.5  # tie
        labels[1:, b] = 1.0
        r = train_knn(meta, ["cats purr softly", "stock prices fell", "rain in spain"],
                      labels, np.arange(3))
        got = r.score_batch(["cats purr softly"])[0]
        assert got.argmax() == b and abs(got[0] - got[1]) < 1e-5  # only a tie moved
        r.save(tmp_path / "knn")
        again = KnnRouter.load(tmp_path / "knn", meta).score_batch(["cats purr softly"])[0]
        assert again.argmax() == b


def test_baseline_policies() -> None:
    avail = np.array([[True, True, False], [True, True, True], [False, False, False]])
    z = baselines.zero_weights(avail)
    assert np.allclose(z.sum(axis=1), [1, 1, 0]) and z[0, 2] == 0
    r = baselines.random_weights(avail, seed=0)
    assert np.array_equal(r, baselines.random_weights(avail, seed=0))
    assert np.all(r[~avail] == 0) and np.allclose(r.sum(axis=1), [1, 1, 0])
    c = baselines.choose(np.array([[0.1, 0.2, 0.7]] * 3), avail)
    assert c[0].tolist() == [0, 1, 0] and c[1].tolist() == [0, 0, 1]
    quality = np.array([[1.0, 1.0, np.nan], [0.0, 0.5, 0.5], [np.nan] * 3])
    cost = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 2.0], [1.0] * 3])
    o = baselines.optimal_weights(quality, cost)
    assert o[0].tolist() == [0, 1, 0] and o[1].tolist() == [0, 0, 1] and o[2].sum() == 0


@pytest.mark.parametrize("layers", [0, 7])
def test_bert_layers_out_of_range_is_a_clear_error(layers: int) -> None:
    from export.errors import PipelineError
    from export.routers.bert import train_bert

    meta, queries, labels, mask, train, _ = _data(4, ALWAYS_MID)
    cfg = FitConfig(epochs=1, progress=False, layers=layers)
    with pytest.raises(PipelineError, match=f"--layers {layers}: the encoder has 6 layers"):
        train_bert(meta, queries, labels, mask, train, np.array([], dtype=int), cfg)


def _complete_meta(kind: str) -> dict[str, object]:
    """A router.json that passes every check but the kind's."""
    return {"format": 1, "kind": kind, "experts": ["a", "b"], "metric": "bertsim",
            "temperature": 0.1, "seed": 0, "table_sha256": "x", "train_queries": 2,
            "datasets": ["d"]}


def test_load_router_rejects_a_folder_without_a_valid_router_json(tmp_path: Path) -> None:
    from export.errors import PipelineError

    with pytest.raises(PipelineError, match="router.json is missing"):
        load_router(tmp_path)
    (tmp_path / "router.json").write_text(json.dumps({"kind": "mlp"}))  # fields missing
    with pytest.raises(PipelineError, match="not a valid router.json"):
        load_router(tmp_path)


@pytest.mark.parametrize("kind", ["nope", "BERT", ""])
def test_router_json_of_an_unknown_kind_is_refused_by_name(tmp_path: Path, kind: str) -> None:
    from export.errors import PipelineError

    (tmp_path / "router.json").write_text(json.dumps(_complete_meta(kind)))
    with pytest.raises(PipelineError, match=f"kind {kind!r}") as err:
        read_meta(tmp_path)
    assert "mlp" in str(err.value) and "bert" in str(err.value)  # says what it knows


# What router.json files in the wild name, written out here rather than read from the
# registry: (router class, accepts --layers, exportable to a daemon bundle).
EXPECTED_KINDS = {
    "mlp": ("MlpRouter", False, False),
    "bert": ("BertRouter", True, True),
    "knn": ("KnnRouter", False, False),
    "irt": ("IrtRouter", True, True),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_every_kind_a_router_json_names_reads_and_resolves(tmp_path: Path, kind: str) -> None:
    """A router.json of each kind the pipeline has written passes the kind check, and its
    entry names the router class it was saved by, which saves and loads itself, and a
    module whose ``fit`` takes the one TrainingSet (what adding a kind must provide).
    Removing or renaming a kind, or pointing it at another class, fails here."""
    import importlib
    import inspect

    from export.routers.base import TrainedRouter

    (tmp_path / "router.json").write_text(json.dumps(_complete_meta(kind)))
    assert read_meta(tmp_path).kind == kind
    cls_name, layers, onnx = EXPECTED_KINDS[kind]
    entry = KINDS[kind]
    cls = entry.router_class()
    assert (cls.__name__, entry.layers, entry.onnx) == (cls_name, layers, onnx)
    assert issubclass(cls, TrainedRouter) and not inspect.isabstract(cls)
    assert isinstance(inspect.getattr_static(cls, "load"), classmethod)
    params = list(inspect.signature(importlib.import_module(entry.module).fit).parameters)
    assert params == ["data"]


def test_the_registry_holds_exactly_the_known_kinds() -> None:
    from export.routers.kinds import exportable

    assert sorted(KINDS) == sorted(EXPECTED_KINDS)
    assert exportable() == [k for k in KINDS if EXPECTED_KINDS[k][2]] == ["bert", "irt"]


def test_an_irt_router_comes_back_through_load_router(tmp_path: Path) -> None:
    """save -> router.json -> the registry's load: the same tower and profiles, so the same
    P(correct) for the same embeddings (no encoder needed to check it)."""
    from agent.profiles import Profile, ProfileSet
    from export.routers.irt import IrtRouter
    from export.routers.irt_tower import Tower, p_matrix

    rng = np.random.default_rng(0)
    tower = Tower(rng.normal(size=(3, 8)), rng.normal(size=3), rng.normal(size=8), 0.25,
                  rng.normal(size=(8, 8)), rng.normal(size=8))
    profiles = ProfileSet("enc", 3, {n: Profile(n, tuple(rng.normal(size=3)), float(b))
                                     for n, b in (("a", 0.5), ("b", -1.0))})
    meta = RouterMeta(**{**_complete_meta("irt"), "metric": "correct"},
                      extra={"layers": 1})
    IrtRouter(meta, tower, profiles).save(tmp_path / "irt")
    again = load_router(tmp_path / "irt")
    assert type(again) is IrtRouter and again.experts == ("a", "b") and again.layers == 1
    x = rng.normal(size=(5, 8))
    u, d = tower(x)
    u2, d2 = again.tower(x)
    want = p_matrix(u, d, list(profiles.profiles.values()))
    assert np.allclose(want, p_matrix(u2, d2, list(again.profiles.profiles.values())))
    assert np.allclose(u, u2) and np.allclose(d, d2)


def test_format_mismatch_is_refused(tmp_path: Path) -> None:
    from export.errors import PipelineError

    (tmp_path / "router.json").write_text(json.dumps({**_complete_meta("mlp"), "format": 2}))
    with pytest.raises(PipelineError, match="unsupported format 2"):
        RouterMeta.read(tmp_path)
