"""Summarise the repeated-split runs of ``run.sh``: one row per seed, then the means.

    .venv/bin/python artifacts/report/expert_table_seeds/summarise.py [runs/seeds]

Writes README.md and paired_difference.png next to this file. The committed
``results/<seed>/results.json`` are copies of that run's ``evaluate --json`` output, so
``summarise.py artifacts/report/expert_table_seeds/results`` redoes the summary without
retraining.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from export.report import format_ci

HERE = Path(__file__).resolve().parent
ROUTERS = ("bert", "mlp", "knn")
POLICIES = ("bert", "mlp", "knn", "zero", "random", "optimal")


def load(root: Path) -> dict[int, dict]:
    out = {}
    for f in sorted(root.glob("*/results.json")):
        out[int(f.parent.name)] = json.loads(f.read_text())
    if not out:
        raise SystemExit(f"no */results.json under {root}: run run.sh first")
    return out


def row(seed: int, res: dict) -> dict:
    ov, strongest = res["overall"], res["strongest_expert"]
    r = {p: ov[p]["quality"] for p in POLICIES}
    r["apgr"] = ov["bert"]["apgr"]
    for name in ROUTERS:
        acc = res["acceptance"][name]
        vs = acc["versus_experts"][strongest]
        r[f"{name}_vs"] = vs["router_quality"] - vs["expert_quality"]
        r[f"{name}_ci"] = vs["diff_ci95"]
        r[f"{name}_beats"] = acc["beats_every_expert"]
        r[f"{name}_40"] = acc.get("best_quality_within_40pct_cost")
    vs = res["acceptance"]["bert"]["versus_experts"][strongest]
    r["strong_q"], r["paired"] = vs["expert_quality"], vs["queries"]
    r["seed"], r["strongest"] = seed, strongest.removeprefix("expert:")
    return r


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, name in enumerate(ROUTERS):
        xs = [i + (k - 1) * 0.25 for i in range(len(rows))]
        ys = [r[f"{name}_vs"] for r in rows]
        lo = [y - r[f"{name}_ci"][0] for y, r in zip(ys, rows, strict=True)]
        hi = [r[f"{name}_ci"][1] - y for y, r in zip(ys, rows, strict=True)]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=name)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(range(len(rows)), [f"seed {r['seed']}" for r in rows])
    ax.set_ylabel(f"router - {rows[0]['strongest']}\n(correct, paired)")
    ax.set_title("Router minus strongest expert on its test queries, 95% bootstrap intervals")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/seeds")
    rows = [row(s, r) for s, r in load(root).items()]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# Repeated random splits of the committed table (metric `correct`)",
        "",
        "Each seed draws its own per-dataset 20% test split (120 queries) and trains BERT-3L,",
        "MLP and 1NN on the rest (`run.sh`, then `summarise.py`). Seed 0 is the split of",
        "`../expert_table/`. `vs` = router minus the strongest expert "
        f"(`{rows[0]['strongest']}`) on the test queries it answered (paired), with the 95%",
        "bootstrap interval; `40%` = best quality on those queries within 40% of its cost.",
        "",
        "| seed | bert | mlp | knn | zero | random | optimal | bert APGR | strongest | "
        "bert vs | mlp vs | knn vs | bert 40% | bert beats all |",
        "|---" * 14 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | " + " | ".join(f(r[p]) for p in POLICIES)
            + f" | {f(r['apgr'])} | {f(r['strong_q'])} ({r['paired']} q) | "
            + " | ".join(f"{r[n + '_vs']:+.3f} {format_ci(r[n + '_ci'])}" for n in ROUTERS)
            + f" | {f(r['bert_40'])} | {'yes' if r['bert_beats'] else 'no'} |"
        )
    mean = {k: statistics.mean(r[k] for r in rows) for k in
            [*POLICIES, "apgr", "strong_q", "bert_vs", "mlp_vs", "knn_vs", "bert_40"]}
    lines.append(
        "| mean | " + " | ".join(f(mean[p]) for p in POLICIES)
        + f" | {f(mean['apgr'])} | {f(mean['strong_q'])} | "
        + " | ".join(f"{mean[n + '_vs']:+.3f}" for n in ROUTERS)
        + f" | {f(mean['bert_40'])} | {sum(r['bert_beats'] for r in rows)} of {len(rows)} |"
    )
    lines += ["", "![paired_difference.png](paired_difference.png)", ""]
    (HERE / "README.md").write_text("\n".join(lines), encoding="utf-8")
    plot(rows, HERE / "paired_difference.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
