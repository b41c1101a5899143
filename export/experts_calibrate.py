"""``edgeroute experts``: list the shipped ability profiles, and fit a configured expert's own.

    edgeroute experts list
    edgeroute experts calibrate NAME [--queries 100] [--max-usd X] [--yes]
                                     [--adaptive [--target-sd 0.05]]

``calibrate`` sends the shipped calibration set (auto-gradable queries spread over the
datasets, disjoint from every training query) to the live configured expert through the
daemon's own expert classes, grades the answers with the project's graders, fits the
expert's profile with the router frozen (``export.profile_fit``, pulled toward its current
profile or the prior of its kind), and writes it atomically to the device's profiles file
(``<data_dir>/device-profiles.json``), which a running daemon reads on reload (SIGHUP or
``POST /admin/router/reload``).

Which queries: by default the first ``--queries`` of the set spread evenly over its datasets.
``--adaptive`` picks each next query from the whole set where one answer tells most about
the profile at the current estimate (``export.adaptive_calibration``: Fisher information, as
computerized adaptive testing does), and stops once every dataset's posterior sd of its
accuracy is at most ``--target-sd``, or at ``--queries`` answers.

Cloud calls go through the budget ledger like the daemon's (a worst-case reservation per
call, settled to the real usage), and the worst case of the whole run is shown before the
first call: over ``--max-usd`` it stops; without ``--yes`` it asks. Answers are appended
with fsync to ``<data_dir>/calibration/NAME.jsonl`` as they come: Ctrl-C loses nothing and
a rerun resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from export.errors import PipelineError

# More answers, a better profile: leaving one expert out of the pooled training, 50 answers
# left 2 of 18 experts more than 1 point of routing quality short, 80 left 1, 100 none
# (artifacts/report/irt/loo_draws.json, means of 5 draws). The set holds 200.
DEFAULT_QUERIES = 100
MAX_TOKENS = {"gsm8k": 512, "mbpp": 384}  # others: 256; what the table was collected with


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="experts_command", required=True)
    sub.add_parser("list", help="the ability profiles shipped with the router bundle")
    c = sub.add_parser("calibrate", help="fit a configured expert's profile on the "
                       "calibration set (live calls)")
    c.add_argument("name", help="a configured expert's name")
    c.add_argument("--queries", type=int, default=DEFAULT_QUERIES,
                   help="calibration queries to send (spread over the datasets)")
    c.add_argument("--max-usd", type=float, default=None,
                   help="refuse to start when the worst-case cloud cost is above this")
    c.add_argument("--yes", action="store_true", help="do not ask before spending")
    c.add_argument("--l2", type=float, default=None,
                   help="pull of theta toward the prior profile")
    c.add_argument("--l2-bias", type=float, default=None,
                   help="pull of the bias toward the prior profile")
    c.add_argument("--adaptive", action="store_true",
                   help="pick each next query where it tells most about the profile at the "
                        "current estimate; stop at --target-sd or --queries")
    c.add_argument("--target-sd", type=float, default=None,
                   help="with --adaptive: stop once every dataset's posterior sd of its "
                        "accuracy is at most this (e.g. 0.05)")
    c.add_argument("--no-progress", dest="progress", action="store_false")


def _bundle(settings: Any) -> Any:
    from agent.profile_router import IrtBundle
    from agent.router_bundle import embedded_bundle

    path = settings.router.bundle
    if path is None or str(path).lower() == "none":
        path = embedded_bundle()
    if path is None:
        raise PipelineError("no router bundle: profiles need an irt bundle (router.bundle)")
    return IrtBundle.load(Path(path), threads=settings.router.threads)


def spread(queries: list[Any], n: int) -> list[Any]:
    """``n`` queries taken round-robin over datasets, in the set's order."""
    by_ds: dict[str, list[Any]] = {}
    for q in queries:
        by_ds.setdefault(q.dataset, []).append(q)
    out: list[Any] = []
    groups = [list(v) for _, v in sorted(by_ds.items())]
    while len(out) < n and any(groups):
        for g in groups:
            if g and len(out) < n:
                out.append(g.pop(0))
    return out


def _worst_usd(cfg: Any, q: Any) -> float:
    """The most one calibration call can cost (prompt upper bound + its max_tokens)."""
    from agent.prompt_size import prompt_size
    from cloud_bridge.usage import Prices

    tokens = prompt_size([{"role": "user", "content": q.prompt}]).upper_bound
    prices = Prices(getattr(cfg, "input_usd_per_mtok", 0.0),
                    getattr(cfg, "output_usd_per_mtok", 0.0))
    return prices.usd(tokens, MAX_TOKENS.get(q.dataset, 256))


def _confirm(cost: float, args: argparse.Namespace) -> None:
    if args.max_usd is not None and cost > args.max_usd:
        raise PipelineError(f"worst-case cost ${cost:.4f} is over --max-usd {args.max_usd}; "
                            "raise it or send fewer --queries")
    if cost > 0 and not args.yes:
        if not sys.stdin.isatty():
            raise PipelineError(f"this run may spend up to ${cost:.4f}; pass --yes to go ahead")
        if input(f"spend up to ${cost:.4f}? [y/N] ").strip().lower() not in ("y", "yes"):
            raise PipelineError("not confirmed; nothing was sent")


def _answer(runner: Any, q: Any, ledger: Any, cfg: Any) -> dict[str, Any]:
    """One graded answer; a cloud call is reserved and settled in the ledger."""
    from export.collect import answer_row

    row_id = None if ledger is None else ledger.reserve(runner.name, _worst_usd(cfg, q))
    try:
        row = answer_row(runner, q, MAX_TOKENS.get(q.dataset, 256))
    except BaseException:
        if row_id is not None:
            ledger.release(row_id)
        raise
    if row_id is not None:
        ledger.settle(row_id, row["cost_usd"] or 0.0, row["input_tokens"] or 0,
                      row["output_tokens"] or 0)
    return row


def calibrate(args: argparse.Namespace) -> int:
    from agent.experts.info import describe_experts
    from agent.profiles import DEVICE_PROFILES_NAME, ProfileSet, resolve
    from agent.settings import load_settings
    from export.calibration_set import load_calibration_set
    from export.collect import TableSink, build_runners
    from export.profile_fit import DEFAULT_L2, DEFAULT_L2_BIAS, fit_profile
    from export.table import read_table

    settings = load_settings()
    experts = describe_experts(settings)
    if args.name not in experts:
        raise PipelineError(f"expert {args.name!r} is not configured; configured: "
                            f"{sorted(experts)}")
    if args.queries < 5:
        raise PipelineError(f"--queries {args.queries}: a profile needs at least 5")
    if args.target_sd is not None and (not args.adaptive or not 0 < args.target_sd < 1):
        raise PipelineError(f"--target-sd {args.target_sd}: give a value in (0, 1), with "
                            "--adaptive (it stops an adaptive run)")
    expert = experts[args.name]
    cfg = next(e for e in [*settings.local_experts, *settings.cloud_experts]
               if e.name == args.name)
    bundle = _bundle(settings)
    calibration_set = load_calibration_set()
    l2 = DEFAULT_L2 if args.l2 is None else args.l2
    l2_bias = DEFAULT_L2_BIAS if args.l2_bias is None else args.l2_bias
    before = resolve(expert, bundle.shipped, {})
    queries = calibration_set if args.adaptive else spread(calibration_set, args.queries)
    worst = sorted((_worst_usd(cfg, q) for q in queries), reverse=True)[:args.queries]
    cost = sum(worst) if expert.kind == "cloud" else 0.0
    print(f"calibrating {args.name} ({expert.kind}) on "
          + (f"up to {args.queries} of {len(queries)} queries chosen adaptively"
             if args.adaptive else f"{len(queries)} queries")
          + f" over {len({q.dataset for q in queries})} datasets; worst-case cost ${cost:.4f}",
          file=sys.stderr)
    _confirm(cost, args)
    store = Path(settings.paths.data_dir) / "calibration" / f"{args.name}.jsonl"
    sink = TableSink(store, {"calibration_for": args.name})
    ledger = None
    if expert.kind == "cloud":
        from agent.runtime import open_ledger

        ledger = open_ledger(settings)
    runner = build_runners(SimpleNamespace(experts=args.name, n_threads=None, no_nll=True))[0]
    from tqdm import tqdm

    t0 = time.monotonic()
    try:
        if args.adaptive:
            wanted = _ask_adaptive(args, bundle, queries, before.profile, expert.kind, store,
                                   lambda q: _answer(runner, q, ledger, cfg), sink, l2, l2_bias)
        else:
            for q in tqdm([q for q in queries if (q.query_id, args.name) not in sink.done],
                          desc=f"calibrate {args.name}", unit="query",
                          disable=not args.progress):
                sink.add(_answer(runner, q, ledger, cfg))
            wanted = {q.query_id for q in queries}
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(sink.done)} answers kept in {store}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        sink.close()
        runner.close()
        if ledger is not None:
            ledger.close()
    rows = [r for r in read_table(store) if r["query_id"] in wanted and r["correct"] is not None]
    u, d = bundle.features_batch([r["query"] for r in rows])
    y = np.array([float(r["correct"]) for r in rows])
    device_path = Path(settings.paths.data_dir) / DEVICE_PROFILES_NAME
    device = (ProfileSet.read(device_path) if device_path.is_file()
              else ProfileSet(bundle.shipped.encoder_id, bundle.shipped.dim))
    if device.encoder_id != bundle.shipped.encoder_id:
        device = ProfileSet(bundle.shipped.encoder_id, bundle.shipped.dim)
    after = fit_profile(u, d, y, before.profile, args.name, expert.kind, l2,
                        f"calibration set ({len(rows)} queries"
                        + (", adaptive)" if args.adaptive else ")"), l2_bias=l2_bias)
    device.with_profiles([after]).write(device_path)
    _report(rows, u, d, before, after, time.monotonic() - t0, l2, l2_bias,
            len(calibration_set))
    print(f"profile of {args.name} -> {device_path}; reload a running daemon (SIGHUP or "
          "POST /admin/router/reload) to use it", file=sys.stderr)
    return 0


def _ask_adaptive(args: argparse.Namespace, bundle: Any, candidates: list[Any], prior: Any,
                  kind: str, store: Path, answer: Any, sink: Any, l2: float,
                  l2_bias: float | None) -> set[str]:
    """The adaptive run over the whole set: answers already in ``store`` (an interrupted or
    earlier run) count first, each new one is appended with fsync before the next is
    chosen. Returns the query ids it fitted on."""
    from tqdm import tqdm

    from export.adaptive_calibration import AdaptiveConfig, run_adaptive
    from export.table import read_table

    index = {q.query_id: i for i, q in enumerate(candidates)}
    stored = ([r for r in read_table(store) if r["query_id"] in index] if sink.done
              else [])  # a new store holds only its header
    answered = [(index[r["query_id"]], None if r["correct"] is None else float(r["correct"]))
                for r in stored]
    u, d = bundle.features_batch([q.prompt for q in candidates])
    datasets = sorted({q.dataset for q in candidates})
    groups = {ds: np.array([q.dataset == ds for q in candidates]) for ds in datasets}
    bar = tqdm(total=args.queries, initial=min(len(answered), args.queries),
               desc=f"calibrate {args.name} (adaptive)", unit="query",
               disable=not args.progress)

    def ask(i: int) -> float | None:
        row = answer(candidates[i])
        sink.add(row)
        bar.update(1)
        return None if row["correct"] is None else float(row["correct"])

    try:
        run = run_adaptive(u, d, groups, prior, ask,
                           AdaptiveConfig(args.queries, args.target_sd, l2=l2, l2_bias=l2_bias),
                           answered, name=args.name, kind=kind)
    finally:
        bar.close()
    why = {"target": f"every dataset's sd at most {args.target_sd}",
           "queries": f"--queries {args.queries} reached",
           "exhausted": "every calibration query answered"}[run.stopped]
    print(f"adaptive: {len(run.order)} answers ({why}); posterior sd of each dataset's "
          "accuracy over the set: " + ", ".join(f"{k} {v:.3f}" for k, v in run.sd.items()),
          file=sys.stderr)
    return {candidates[i].query_id for i in run.order}


def _report(rows: list[dict[str, Any]], u: np.ndarray, d: np.ndarray, before: Any,
            after: Any, wall_s: float, l2: float, l2_bias: float | None,
            set_size: int) -> None:
    from export.profile_fit import accuracy_spread
    from export.routers.irt_tower import p_matrix

    pb = p_matrix(u, d, [before.profile])[:, 0]
    pa = p_matrix(u, d, [after])[:, 0]
    datasets = np.array([r["dataset"] for r in rows])
    masks = {ds: datasets == ds for ds in sorted(set(datasets.tolist()))}
    masks["all"] = np.ones(len(rows), bool)
    sd = accuracy_spread(u, d, after, masks, l2, l2_bias)
    print(f"{'dataset':<10} {'n':>4} {'observed':>9} {'before':>8} {'after':>16}   "
          f"(before: {before.source} profile {before.profile.name!r}; after: +- the fit's "
          "posterior sd)")
    y = np.array([float(r["correct"]) for r in rows])
    for ds, m in masks.items():
        after_s = f"{pa[m].mean():.3f} +- {sd[ds]:.3f}"
        print(f"{ds:<10} {int(m.sum()):>4} {y[m].mean():>9.3f} {pb[m].mean():>8.3f} "
              f"{after_s:>16}")
    print(f"({wall_s:.0f} s; a wide +- narrows with more --queries, up to {set_size})")


def list_profiles(args: argparse.Namespace) -> int:
    from agent.settings import load_settings

    bundle = _bundle(load_settings())
    print(f"{'profile':<48} {'kind':<6} {'mean P':>7} {'obs':>7}  fitted on")
    for p in sorted(bundle.shipped.profiles.values(), key=lambda p: (p.kind, p.name)):
        mp = f"{p.mean_p:.3f}" if p.mean_p is not None else "-"
        print(f"{p.name:<48} {p.kind:<6} {mp:>7} {p.observations:>7}  {p.fitted_on}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.experts_command == "list":
        return list_profiles(args)
    return calibrate(args)
