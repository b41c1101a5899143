"""A SIMULATION of a device learning from its own traffic (issue #29): no real users here.

A daemon (the real one: uvicorn on loopback, the embedded router bundle) has two experts:

- ``local``: a local GGUF named ``mistral-7b-chat.gguf``, so the router gives it the shipped
  profile of ``mistralai/mistral-7b-chat``, and its outcomes are that model's rows;
- ``gpt4``: a cloud expert whose model id is ``gpt-4-1106-preview`` (GPT-4's shipped profile,
  at GPT-4's list price, $10 / $30 per 1M tokens), but whose outcomes are the rows of
  ``WizardLM/WizardLM-13B-V1.2``: the endpoint does not serve what its profile says.

Every query is ``POST /v1/route``'d (no expert is called). Routing quality on the held-out
eval stream (RouterBench's test files, 947 queries with both models' outcomes) is the
realised utility of the daemon's choices, the quantity its policy maximises: the chosen
model's graded correctness minus its cost (the table's token counts at the expert's prices)
divided by ``usd_per_correct``. Arms:

- ``static``: the profiles as shipped;
- ``feedback_10``: a stream of RouterBench train-split queries (shuffled, cycled) is routed;
  for 10% of them the chosen expert's own table grade is sent as ``POST /v1/feedback`` on the
  route call's id (the score a client would send after calling that expert itself);
- ``shadow_5``: for 5% of the stream, shadow grading's outcomes: the chosen expert's grade
  and the reference expert's (``gpt4``), written to the outcomes store with source
  ``shadow`` at ``outcomes.shadow_weight``. Simulated: the judge is replaced by the table's
  grades (a perfect judge) and no reference call is made; the live path (reference and
  judge calls, their own budget) is tests/agent/test_shadow.py;
- ``oracle``: ``gpt4`` routed with WizardLM-13B's own shipped ability (theta, bias), its
  length model kept (all a refit changes is the ability).

At checkpoints of the number of stored outcomes the learning arms run ``edgeroute profile
update`` (``agent.refit.update``: guarded, held-back outcomes) and ``POST
/admin/router/reload``, then route the eval stream. Resumable: each arm's state and a
snapshot of its data dir are kept at every checkpoint under ``--work``; progress goes to
``--work/progress.log``. Reproduce: ``artifacts/report/closed_loop/run.sh``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

LOCAL_ROWS = "mistralai/mistral-7b-chat"
GPT4_ROWS = "WizardLM/WizardLM-13B-V1.2"  # --served: whose rows ``gpt4`` answers with
PRICES = {"local": (0.0, 0.0), "gpt4": (10.0, 30.0)}
REFERENCE = "gpt4"
CHECKPOINTS = (0, 25, 50, 100, 150, 200, 300, 400, 500, 650, 800)
ARMS = ("static", "oracle", "feedback_10", "shadow_5")


@dataclass(frozen=True)
class SimConfig:
    table: Path
    work: Path
    out: Path
    usd_per_correct: float = 0.05
    served: str = GPT4_ROWS  # the table's model behind ``gpt4`` (and its true profile)
    max_tokens: int = 256
    seed: int = 0
    eval_limit: int | None = None  # a quick run: the first N eval queries
    checkpoints: tuple[int, ...] = CHECKPOINTS
    max_stream: int = 20_000  # route calls an arm may make before giving up on a checkpoint


@dataclass(frozen=True)
class Stream:
    """Queries, and per served expert its grade and realised cost on each."""

    ids: list[str]
    queries: list[str]
    correct: dict[str, np.ndarray]
    cost: dict[str, np.ndarray]


def log(cfg: SimConfig, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(cfg.work / "progress.log", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def load_streams(cfg: SimConfig) -> tuple[Stream, Stream]:
    """(train stream, eval stream): RouterBench's own split; queries both models answered."""
    from cloud_bridge.usage import Prices
    from export.labels import build_matrix
    from export.table import read_table

    m = build_matrix(list(read_table(cfg.table)))
    v = m.values
    cols = {"local": m.experts.index(LOCAL_ROWS), "gpt4": m.experts.index(cfg.served)}
    both = np.all([np.isfinite(v["correct"][:, j]) for j in cols.values()], axis=0)
    out = []
    for split in ("train", "test"):
        idx = np.flatnonzero(both & np.array([s == split for s in m.splits]))
        correct = {e: v["correct"][idx, j] for e, j in cols.items()}
        cost = {e: np.nan_to_num(Prices(*PRICES[e]).usd(v["input_tokens"][idx, j],
                                                       v["output_tokens"][idx, j]))
                for e, j in cols.items()}
        out.append(Stream([m.query_ids[i] for i in idx], [m.queries[i] for i in idx],
                          correct, cost))
    train, test = out
    if cfg.eval_limit:
        n = cfg.eval_limit
        test = Stream(test.ids[:n], test.queries[:n], {e: c[:n] for e, c in test.correct.items()},
                      {e: c[:n] for e, c in test.cost.items()})
    return train, test


def daemon_settings(cfg: SimConfig, data: Path, port: int) -> Any:
    from agent.settings import Settings

    gguf = cfg.work / "models" / "mistral-7b-chat.gguf"  # a real GGUF under that name
    if not gguf.exists():
        from agent.model_files import BUILTINS, assemble_builtin
        from agent.settings import SMOLLM2_DEFAULT

        gguf.parent.mkdir(parents=True, exist_ok=True)
        cache = Path(os.environ.get("EDGEROUTE_PATHS__CACHE_DIR", REPO / ".venv" / "model-cache"))
        gguf.symlink_to(assemble_builtin(BUILTINS[SMOLLM2_DEFAULT], cache))
    return Settings(
        paths={"data_dir": data, "config_dir": data / "cfg"},
        server={"port": port, "max_tokens_cap": 4096},
        local_experts=[{"name": "local", "model": str(gguf), "n_threads": 1}],
        cloud_experts=[{"name": "gpt4", "model": "gpt-4-1106-preview",
                        "base_url": "http://127.0.0.1:9/v1", "input_usd_per_mtok": 10,
                        "output_usd_per_mtok": 30}],
        policy={"usd_per_correct": cfg.usd_per_correct},
        outcomes={"refit_min_outcomes": 20},
    )


@contextmanager
def serving(settings: Any) -> Iterator[str]:
    import uvicorn

    from agent.app import create_app
    from agent.runtime import build_runtime

    app = create_app(settings, build_runtime(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.server.port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the daemon did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.server.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def route(client: Any, query: str, max_tokens: int) -> dict[str, Any]:
    r = client.post("/v1/route", json={"model": "auto", "max_tokens": max_tokens,
                                       "messages": [{"role": "user", "content": query}]})
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def evaluate(client: Any, cfg: SimConfig, ev: Stream) -> dict[str, Any]:
    """Route the eval stream; the realised utility of the choices, and its parts."""
    chosen = [route(client, q, cfg.max_tokens)["model"] for q in ev.queries]
    correct = np.array([ev.correct[e][i] for i, e in enumerate(chosen)])
    cost = np.array([ev.cost[e][i] for i, e in enumerate(chosen)])
    return {"quality": float((correct - cost / cfg.usd_per_correct).mean()),
            "correct": float(correct.mean()), "cost_usd": float(cost.mean()),
            "gpt4_share": float(np.mean([c == "gpt4" for c in chosen])),
            "per_query": (correct - cost / cfg.usd_per_correct).round(6).tolist()}


def sampled(arm: str, i: int, share: float) -> bool:
    """The stream's i-th query gets an outcome (the same in a resumed run)."""
    digest = hashlib.sha256(f"{arm}:{i}".encode()).hexdigest()
    return int(digest[:12], 16) / 16**12 < share


def write_oracle_profiles(settings: Any, served: str) -> None:
    """``gpt4`` with the served model's own ability, its configured length model kept."""
    from dataclasses import replace

    from agent.profiles import ProfileSet
    from agent.refit import bundle_profiles

    shipped = bundle_profiles(settings)
    gpt4 = shipped.profiles["gpt-4-1106-preview"]
    true = shipped.profiles[served]
    oracle = replace(true, name="gpt4", kind="cloud", length=gpt4.length,
                     fitted_on=f"oracle: {served}'s shipped ability")
    ProfileSet(shipped.encoder_id, shipped.dim).with_profiles([oracle]).write(
        Path(settings.paths.data_dir) / "device-profiles.json")


def run_fixed(cfg: SimConfig, arm: str, ev: Stream) -> dict[str, Any]:
    path = cfg.work / f"{arm}.json"
    if path.is_file():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    import httpx

    data = cfg.work / arm / "data"
    shutil.rmtree(data, ignore_errors=True)
    settings = daemon_settings(cfg, data, free_port())
    if arm == "oracle":
        write_oracle_profiles(settings, cfg.served)
    with serving(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        res = {"arm": arm, **evaluate(c, cfg, ev)}
    _atomic(path, res)
    log(cfg, f"{arm}: quality {res['quality']:.4f} correct {res['correct']:.4f} "
             f"cost ${res['cost_usd']:.6f} gpt4 {res['gpt4_share']:.1%}")
    return res


def _atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _outcomes(store: Any) -> int:
    return int(store.summary()["outcomes"])


def run_learning(cfg: SimConfig, arm: str, train: Stream, ev: Stream) -> dict[str, Any]:
    """A learning arm, resumable at its last checkpoint (state + data dir snapshot)."""
    import httpx

    from agent.outcomes import OutcomeStore
    from agent.refit import update

    kind, share = arm.split("_")[0], int(arm.split("_")[1]) / 100
    base = cfg.work / arm
    state_path, data, snap = base / "state.json", base / "data", base / "snapshot"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {
        "arm": arm, "position": 0, "checkpoints": []}
    done = {c["outcomes_target"] for c in state["checkpoints"]}
    if all(c in done for c in cfg.checkpoints):
        return state  # type: ignore[no-any-return]
    shutil.rmtree(data, ignore_errors=True)
    if snap.is_dir():
        shutil.copytree(snap, data)
    settings = daemon_settings(cfg, data, free_port())
    rng_order = np.random.default_rng(cfg.seed).permutation(len(train.ids))
    with serving(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        store = OutcomeStore.of(settings)
        try:
            for target in [t for t in cfg.checkpoints if t not in done]:
                pos = state["position"]
                while _outcomes(store) < target and pos - state["position"] < cfg.max_stream:
                    i = int(rng_order[pos % len(rng_order)])
                    got = route(c, train.queries[i], cfg.max_tokens)
                    if sampled(arm, pos, share):
                        _feed(kind, c, store, got, train, i, settings)
                    pos += 1
                state["position"] = pos
                upd = update(settings, store) if target > 0 else None
                if upd is not None and upd.applied:
                    c.post("/admin/router/reload").raise_for_status()
                res = evaluate(c, cfg, ev)
                state["checkpoints"].append({
                    "outcomes_target": target, "outcomes": _outcomes(store), "queries": pos,
                    "applied": [] if upd is None else upd.applied,
                    "refit": {} if upd is None else {
                        n: {k: v for k, v in f.as_dict().items() if k not in ("prior", "profile")}
                        for n, f in upd.fits.items()},
                    "bias": {n: f.profile.bias for n, f in (upd.fits.items() if upd else ())},
                    **res})
                shutil.rmtree(snap, ignore_errors=True)
                store.close()  # a consistent copy of the store: closed, then copied
                shutil.copytree(data, snap)
                store = OutcomeStore.of(settings)
                _atomic(state_path, state)
                log(cfg, f"{arm}: {target} outcomes ({pos} queries): quality "
                         f"{res['quality']:.4f} gpt4 {res['gpt4_share']:.1%} applied "
                         f"{state['checkpoints'][-1]['applied']}")
        finally:
            store.close()
    return state  # type: ignore[no-any-return]


def _feed(kind: str, client: Any, store: Any, got: dict[str, Any], train: Stream, i: int,
          settings: Any) -> None:
    """One query's outcomes: feedback on the chosen expert, or a (simulated) shadow grade
    of the chosen expert and of the reference."""
    chosen, rid = got["model"], got["id"]
    if kind == "feedback":
        r = client.post("/v1/feedback", json={"id": rid, "score": float(train.correct[chosen][i])})
        r.raise_for_status()
        return
    w = settings.outcomes.shadow_weight
    store.add_outcome(rid, "shadow", float(train.correct[chosen][i]), w, expert=chosen)
    if chosen != REFERENCE:
        store.add_outcome(rid, "shadow", float(train.correct[REFERENCE][i]), w,
                          expert=REFERENCE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, required=True, help="RouterBench table (table import)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "closed_loop")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--checkpoints", default=",".join(map(str, CHECKPOINTS)))
    p.add_argument("--usd-per-correct", type=float, default=0.05)
    p.add_argument("--served", default=GPT4_ROWS, help="the table's model behind gpt4")
    p.add_argument("--arms", default=",".join(ARMS), help="a subset (quick looks)")
    a = p.parse_args(argv)
    cfg = SimConfig(a.table, a.work, a.out, usd_per_correct=a.usd_per_correct, served=a.served,
                    eval_limit=a.eval_limit,
                    checkpoints=tuple(int(x) for x in a.checkpoints.split(",")))
    cfg.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train, ev = load_streams(cfg)
    log(cfg, f"{len(train.ids)} stream queries, {len(ev.ids)} eval queries")
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v
                                          for k, v in asdict(cfg).items()}}
    for arm in a.arms.split(","):
        results[arm] = (run_fixed(cfg, arm, ev) if arm in ("static", "oracle")
                        else run_learning(cfg, arm, train, ev))
    if set(ARMS) <= set(results):
        from report import write_report  # artifacts/report/closed_loop/report.py

        write_report(results, cfg.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
