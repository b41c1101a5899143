"""``edgeroute replay``: a table's test split sent through a daemon's own route call, held to
what ``edgeroute evaluate`` reports for the same bundle at the same settings.

    edgeroute replay --table T --router BUNDLE --cloud gpt-4-1106-preview=10,30 [--json]

A daemon is started in-process (uvicorn on a free loopback port: the embedded default
local experts, the given cloud experts at the given prices, ``router.bundle`` = BUNDLE,
its data in a temporary folder) unless ``--url`` names a running one; every test query is
``POST /v1/route``'d as a user turn (no expert is called, the ledger is not touched). The
report: the daemon's share per expert beside evaluate's ``daemon`` row, the share of
queries on which they choose alike, the daemon's mean expected cost beside the realised
cost of the same choices (the table's rows; ``capped``: answers cut at max_tokens), and
quality (where the chosen expert has an outcome) against always-local and always-cloud.

``--cloud NAME=IN,OUT[@EXPERT]``: a cloud expert NAME at those prices (USD per 1M input and
output tokens), configured with ``model`` NAME (so its profile resolves as a user's would:
shipped, else the prior); its outcomes are the table's rows of EXPERT (default NAME). With
``@``, a real model's real answers stand in for a model the router has no profile for.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import PipelineError


@dataclass(frozen=True)
class CloudSpec:
    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    table_expert: str

    @classmethod
    def parse(cls, spec: str) -> CloudSpec:
        head, _, rows = spec.partition("@")
        name, _, prices = head.partition("=")
        try:
            pin, pout = (float(x) for x in prices.split(","))
        except ValueError:
            raise PipelineError(f"--cloud {spec!r}: give NAME=IN,OUT[@EXPERT], e.g. "
                                "gpt-4-1106-preview=10,30") from None
        if not name:
            raise PipelineError(f"--cloud {spec!r}: the expert needs a name")
        return cls(name, pin, pout, rows or name)


@dataclass(frozen=True)
class ReplayConfig:
    table: Path
    router: Path
    cloud: tuple[str, ...] = ()
    usd_per_correct: float | None = None  # None: the daemon's default
    max_tokens: int = 256
    url: str | None = None  # a running daemon; None: start one
    compare: bool = True  # run evaluate with the same settings beside it


def _settings(cfg: ReplayConfig, clouds: list[CloudSpec], data: Path, port: int) -> Any:
    from agent.settings import DEFAULT_USD_PER_CORRECT, Settings

    v = DEFAULT_USD_PER_CORRECT if cfg.usd_per_correct is None else cfg.usd_per_correct
    return Settings(
        paths={"data_dir": data},
        server={"port": port, "max_tokens_cap": max(4096, cfg.max_tokens)},
        cloud_experts=[{"name": c.name, "model": c.name, "base_url": "http://127.0.0.1:9/v1",
                        "input_usd_per_mtok": c.input_usd_per_mtok,
                        "output_usd_per_mtok": c.output_usd_per_mtok} for c in clouds],
        router={"bundle": str(cfg.router)},
        policy={"usd_per_correct": v},
    )


@contextmanager
def serving(settings: Any) -> Iterator[str]:
    """The daemon of ``settings`` on its loopback port, in a thread."""
    import threading
    import time

    import uvicorn

    from agent.app import create_app
    from agent.runtime import build_runtime

    app = create_app(settings, build_runtime(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.server.port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise PipelineError("the daemon did not start; run `edgeroute doctor`")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.server.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def route_all(url: str, queries: list[str], max_tokens: int) -> list[dict[str, Any]]:
    """Every query's ``routing`` from the daemon's ``/v1/route``."""
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i, q in enumerate(queries):
            r = c.post("/v1/route", json={"model": "auto", "max_tokens": max_tokens,
                                          "messages": [{"role": "user", "content": q}]})
            if r.status_code != 200:
                raise PipelineError(f"query {i}: /v1/route answered {r.status_code}: "
                                    f"{r.text[:200]}")
            out.append(r.json()["routing"])
    return out


def figures(mt: Any, q: np.ndarray, routed: list[dict[str, Any]], rows_of: dict[str, str],
            prices: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """Share, quality and expected against realised cost of the daemon's choices."""
    names = list(routed[0]["experts"])
    chosen = [r["expert"] for r in routed]
    col = {n: mt.experts.index(rows_of.get(n, n)) for n in names if rows_of.get(n, n)
           in mt.experts}
    v = mt.values
    got, real, capped = [], [], []
    for i, n in enumerate(chosen):
        j = col.get(n)
        got.append(np.nan if j is None else q[i, j])
        cost = np.nan if j is None else v["cost_usd"][i, j]
        p = prices.get(n)
        free = p is None or p.usd(1, 1) == 0
        tin, tout = (np.nan, np.nan) if j is None else (v["input_tokens"][i, j],
                                                         v["output_tokens"][i, j])
        real.append(0.0 if free else (p.usd(tin, tout) if np.isfinite(tin) and np.isfinite(
            tout) else cost))
        capped.append(0.0 if free else (p.usd(tin, min(tout, max_tokens))
                                        if np.isfinite(tin) and np.isfinite(tout) else np.nan))
    got_a, real_a, cap_a = np.array(got), np.array(real), np.array(capped)
    expected = np.array([r["expected_cost_usd"] for r in routed])
    priced = np.isfinite(real_a)
    common = np.isfinite(q).all(axis=1)  # every expert has an outcome: paired with always-X
    return {
        "quality_common": float(got_a[common].mean()) if common.any() else None,
        "cost_common_usd": float(cap_a[common].mean()) if common.any() else None,
        "expected_common_usd": float(expected[common].mean()) if common.any() else None,
        "common_queries": int(common.sum()),
        "queries": len(chosen),
        "share": {n: chosen.count(n) / len(chosen) for n in names},
        "quality": float(np.nanmean(got_a)) if np.isfinite(got_a).any() else None,
        "scored_queries": int(np.isfinite(got_a).sum()),
        "expected_cost_usd": float(expected.mean()),
        "expected_cost_usd_where_realised": float(expected[priced].mean()),
        "realised_cost_usd": float(real_a[priced].mean()),
        "realised_capped_cost_usd": float(np.nanmean(cap_a)) if np.isfinite(cap_a).any()
        else None,
        "priced_queries": int(priced.sum()),
        "choices": chosen,
    }


def always(mt: Any, q: np.ndarray, prices: dict[str, Any], max_tokens: int
           ) -> dict[str, Any]:
    """Each expert alone: quality on the queries it has an outcome for, and its mean cost
    there at the configured prices, answers cut at max_tokens (local: free)."""
    v = mt.values
    out = {}
    for j, e in enumerate(mt.experts):
        have = np.isfinite(q[:, j])
        p = prices.get(e)
        cost = [0.0 if p is None else p.usd(a, min(b, max_tokens))
                for a, b in zip(v["input_tokens"][have, j], v["output_tokens"][have, j],
                                strict=True) if p is None or (np.isfinite(a) and np.isfinite(b))]
        common = np.isfinite(q).all(axis=1)
        cc = [0.0 if p is None else p.usd(a, min(b, max_tokens))
              for a, b in zip(v["input_tokens"][common, j], v["output_tokens"][common, j],
                              strict=True)]
        out[e] = {"quality": float(q[have, j].mean()) if have.any() else None,
                  "queries": int(have.sum()),
                  "cost_usd": float(np.mean(cost)) if cost else None,
                  "quality_common": float(q[common, j].mean()) if common.any() else None,
                  "cost_common_usd": float(np.nanmean(cc)) if cc else None}
    return out


def replay(cfg: ReplayConfig) -> dict[str, Any]:
    """The stage: the daemon's route calls on the test split, beside evaluate's figures."""
    from cloud_bridge.usage import Prices
    from export.evaluate import EvaluateConfig, evaluate
    from export.held_out import check_held_out, held_out
    from export.routers.kinds import load_router
    from export.scoring import only_experts, profiled_in

    clouds = [CloudSpec.parse(s) for s in cfg.cloud]
    r = load_router(cfg.router)
    check_held_out(cfg.table, r.meta)
    local = ["qwen2.5-coder-0.5b", "smollm2-135m"]  # the daemon's embedded defaults
    rows_of = {c.name: c.table_expert for c in clouds}
    table_experts = local + [c.table_expert for c in clouds]
    meta = only_experts(profiled_in(cfg.table, r.meta), ",".join(table_experts))
    _, mt, q, _ = held_out(cfg.table, meta)
    with tempfile.TemporaryDirectory(prefix="edgeroute-replay-") as tmp:
        if cfg.url is None:
            with serving(_settings(cfg, clouds, Path(tmp), _free_port())) as url:
                routed = route_all(url, mt.queries, cfg.max_tokens)
        else:
            routed = route_all(cfg.url, mt.queries, cfg.max_tokens)
    prices = {c.name: Prices(c.input_usd_per_mtok, c.output_usd_per_mtok) for c in clouds}
    from agent.settings import DEFAULT_USD_PER_CORRECT

    out: dict[str, Any] = {
        "table": str(cfg.table), "router": str(cfg.router), "max_tokens": cfg.max_tokens,
        "usd_per_correct": (DEFAULT_USD_PER_CORRECT if cfg.usd_per_correct is None
                            else cfg.usd_per_correct),
        "cloud": [c.__dict__ for c in clouds], "daemon": figures(mt, q, routed, rows_of,
                                                                 prices, cfg.max_tokens)}
    out["always"] = always(mt, q, {c.table_expert: prices[c.name] for c in clouds},
                           cfg.max_tokens)
    if cfg.compare and all(c.name == c.table_expert for c in clouds):
        ev = evaluate(EvaluateConfig(
            table=cfg.table, router=(cfg.router,), experts=",".join(table_experts),
            price=tuple(f"{c.name}={c.input_usd_per_mtok},{c.output_usd_per_mtok}"
                        for c in clouds),
            usd_per_correct=(DEFAULT_USD_PER_CORRECT if cfg.usd_per_correct is None
                             else cfg.usd_per_correct),
            default_expert=local[0], max_tokens=cfg.max_tokens))
        row = next(iter(ev["daemon"].values()))
        same = [a == b for a, b in zip(out["daemon"]["choices"], row["choices"], strict=True)]
        out["evaluate"] = {k: v for k, v in row.items() if k != "choices"}
        out["agreement"] = float(np.mean(same))
        out["share_difference"] = {e: out["daemon"]["share"].get(e, 0.0) - row["share"].get(
            e, 0.0) for e in row["share"]}
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=Path, required=True, help="expert table (.jsonl[.gz])")
    p.add_argument("--router", type=Path, required=True,
                   help="a router bundle trained on the table's train split")
    p.add_argument("--cloud", action="append", default=[], metavar="NAME=IN,OUT[@EXPERT]",
                   help="a cloud expert at these prices (USD per 1M tokens); repeatable")
    p.add_argument("--usd-per-correct", type=float, default=None,
                   help="the daemon's policy.usd_per_correct (default: the shipped default)")
    p.add_argument("--max-tokens", type=int, default=256, help="each request's max_tokens")
    p.add_argument("--url", default=None, help="a running daemon (default: start one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from export.cli import stage_config

    res = replay(stage_config(ReplayConfig, args))
    if args.json:
        print(json.dumps({k: v for k, v in res.items()}, indent=1, default=str))
        return 0
    d = res["daemon"]
    print(f"{d['queries']} test queries through /v1/route (max_tokens {res['max_tokens']})")
    print("share: " + ", ".join(f"{e} {s:.1%}" for e, s in d["share"].items()))
    print(f"quality {d['quality']:.4f} on {d['scored_queries']} scored; expected cost "
          f"${d['expected_cost_usd']:.6f}/query; realised ${d['realised_cost_usd']:.6f} "
          f"(capped at max_tokens ${d['realised_capped_cost_usd'] or 0:.6f}) where priced")
    if "evaluate" in res:
        print("evaluate, same bundle and settings: share " + ", ".join(
            f"{e} {s:.1%}" for e, s in res["evaluate"]["share"].items())
            + f"; same choice on {res['agreement']:.1%} of queries")
    return 0
