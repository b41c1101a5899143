"""The evaluation report: Markdown tables plus PNG plots (matplotlib, Agg backend) from
the result of ``export.evaluate.evaluate``; ``evaluate --report DIR`` writes it.

Files: ``README.md``, ``results.json`` (the evaluation object), ``trilemma.png`` (cost vs
quality, throughput as colour), ``per_dataset.png``, ``queries_per_expert.png`` and
``cost_quality.png`` (the cost-weight sweep per router, with the single experts) and, for
a table with local confidences, ``cascade.png`` (the local-first cascade's curve).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = (
    "quality",
    "apgr",
    "cost_usd",
    "cost_per_mtok",
    "throughput_tps",
    "bertsim",
    "nll",
    "accuracy",
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _routers(res: dict[str, Any]) -> list[str]:
    return [
        k for k in res if not k.startswith("expert:") and k not in ("zero", "random", "optimal")
    ]


def _short(name: str) -> str:
    return name.removeprefix("expert:").split("/")[-1]


def plot_trilemma(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    overall = result["overall"]
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(k, v) for k, v in overall.items() if v["quality"] is not None]
    tps = [v["throughput_tps"] for _, v in pts]
    have_tp = all(t is not None for t in tps)
    xs = [v["cost_usd"] or 0.0 for _, v in pts]
    colour = {"c": tps, "cmap": "viridis"} if have_tp else {}
    sc = ax.scatter(
        xs,
        [v["quality"] for _, v in pts],
        **colour,
        s=[120 if k in _routers(overall) else 50 for k, _ in pts],
    )
    for (k, v), x in zip(pts, xs, strict=True):
        ax.annotate(
            _short(k), (x, v["quality"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    if have_tp:
        fig.colorbar(sc, ax=ax, label="throughput (tokens/s)")
    if all(x > 0 for x in xs):
        ax.set_xscale("log")
    ax.set(
        xlabel="mean cost per query (USD)",
        ylabel=f"quality ({result['metric']})",
        title="Trilemma: cost vs quality (colour: throughput)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_dataset(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    per = result["per_dataset"]
    names = [*_routers(result["overall"]), "zero", "random", result["strongest_expert"], "optimal"]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(per)), 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [per[ds].get(name, {}).get("quality") or 0.0 for ds in per]
        ax.bar([j + i * width for j in range(len(per))], vals, width, label=_short(name))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(per))], list(per))
    ax.set(ylabel=f"quality ({result['metric']})", title="Quality per dataset")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_queries_per_expert(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    overall = result["overall"]
    experts = result["experts"]
    names = [*_routers(overall), "optimal"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(experts)), 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        qpe = overall[name]["queries_per_expert"]
        ax.bar(
            [j + i * width for j in range(len(experts))],
            [qpe[e] for e in experts],
            width,
            label=name,
        )
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(experts))],
        [_short(e) for e in experts],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set(ylabel="test queries routed", title="Queries per expert: routers vs Optimal")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost_quality(result: dict[str, Any], path: Path) -> bool:
    if not result.get("curves"):
        return False
    plt = _pyplot()
    overall = result["overall"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, curve in result["curves"].items():
        pts = sorted((p["cost_usd"], p["quality"]) for p in curve if p["quality"] is not None)
        ax.plot([c for c, _ in pts], [q for _, q in pts], marker="o", ms=3, label=name)
    for name, v in overall.items():
        if name.startswith("expert:") or name in ("zero", "random"):
            ax.scatter([v["cost_usd"]], [v["quality"]], marker="x", color="grey")
            ax.annotate(_short(name), (v["cost_usd"], v["quality"]), fontsize=7)
    ax.axhline(overall["optimal"]["quality"], ls="--", color="k", lw=0.8, label="optimal quality")
    ax.set(
        xlabel="mean cost per query (USD)",
        ylabel=f"quality ({result['metric']})",
        title="Cost-quality curve (sweep of the cost weight)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_ci(ci: list[float] | None) -> str:
    """A bootstrap interval as ``[-0.012, +0.034]`` (``-`` when there is none)."""
    return "-" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _ci(versus: dict[str, Any]) -> str:
    rq, eq, ci = versus.get("router_quality"), versus.get("expert_quality"), versus.get("diff_ci95")
    if rq is None or eq is None or not ci:
        return "-"
    return f"{rq - eq:+.3f} {format_ci(ci)}"


def markdown_table(res: dict[str, Any]) -> str:
    lines = ["| policy | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in res.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def plot_cascade(result: dict[str, Any], path: Path) -> bool:
    """Quality against cost: route-only over what a correct answer is worth, the cascade
    over its threshold (at the default band), the cloud experts alone."""
    cascade = result.get("cascade")
    if not cascade:
        return False
    plt = _pyplot()
    routers = cascade["routers"]
    fig, axes = plt.subplots(1, len(routers), figsize=(7 * len(routers), 5), squeeze=False)
    for ax, (name, c) in zip(axes[0], routers.items(), strict=True):
        for key, label in (("curve_route_only", "route-only (sweep of $/correct)"),
                           ("curve_cascade", "cascade (sweep of the threshold)")):
            pts = sorted((p["cost_usd"], p["quality"]) for p in c[key]
                         if p["quality"] is not None)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, label=label)
        at = c["cascade"]
        ax.scatter([at["cost_usd"]], [at["quality"]], s=90, marker="*", color="k", zorder=5,
                   label="cascade at the defaults")
        for j, a in c["always_cloud"].items():
            if a["quality_on_its_queries"] is not None:
                ax.scatter([a["cost_usd"]], [a["quality_on_its_queries"]], marker="x",
                           color="grey")
                ax.annotate(f"always {result['experts'][int(j)]} (its queries)",
                            (a["cost_usd"], a["quality_on_its_queries"]), fontsize=7)
        ax.set(xlabel="mean cost per query (USD)", ylabel=f"quality ({result['metric']})",
               title=f"{name}: local-first cascade vs route-only (test split)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(result: dict[str, Any], plots: list[str]) -> str:
    overall = result["overall"]
    out = [
        "# Router evaluation",
        "",
        f"Table `{result['table']}` (sha256 `{result['table_sha256'][:12]}`), metric "
        f"`{result['metric']}` (quality: higher is better; for nll it is minus the NLL), "
        f"{result['test_queries']} test queries, seed {result['seed']}. "
        f"Strongest single expert: `{result['strongest_expert']}`. APGR = share of the "
        "Zero-to-Optimal quality gap recovered. Generated by `edgeroute evaluate --report`.",
        "",
        "## Overall",
        "",
        markdown_table(overall),
        "",
    ]
    if result.get("acceptance"):
        strongest = result["strongest_expert"]
        out += [
            "## Acceptance figures",
            "",
            "Each router against each single expert on the test queries that expert has an "
            f"outcome for (paired); the cost-quality columns are read off the curve on "
            f"`{strongest}`'s queries.",
            "",
            "| router | beats every expert | router vs strongest expert (paired) "
            "| difference, 95% bootstrap interval "
            "| cost ratio at strongest expert's quality "
            "| best quality within 40% of its cost | experts it does not beat |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, a in result["acceptance"].items():
            versus = a.get("versus_experts", {})
            vs = versus.get(strongest, {})
            losses = ", ".join(
                f"{e.removeprefix('expert:')} ({_fmt(v['router_quality'])} vs "
                f"{_fmt(v['expert_quality'])})"
                for e, v in versus.items()
                if v["router_quality"] is None or v["router_quality"] <= v["expert_quality"]
            )
            out.append(
                f"| {name} | {'yes' if a.get('beats_every_expert') else 'no'} | "
                f"{_fmt(vs.get('router_quality'))} vs {_fmt(vs.get('expert_quality'))} "
                f"({vs.get('queries', '-')} queries) | {_ci(vs)} | "
                f"{_fmt(a.get('cost_ratio_at_strongest_quality'))} | "
                f"{_fmt(a.get('best_quality_within_40pct_cost'))} | {losses or '-'} |"
            )
        out.append("")
    if result.get("cascade"):
        rule = result["cascade"]["rule"]
        out += [
            "## Local-first cascade (simulated)",
            "",
            f"At the daemon's defaults: band {rule['band']}, threshold {rule['threshold']} "
            f"({rule['signal']}), usd_per_correct {result['cascade']['usd_per_correct']}. "
            "Route-only at equal spend: the route-only point whose spend is closest to the "
            "cascade's without exceeding it (matched on cost, no labels).",
            "",
            "| router | cascade quality | cost $/query | tried local | kept | route-only same V "
            "| route-only equal spend | difference (95% paired bootstrap) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, c in result["cascade"]["routers"].items():
            a, same, eq = c["cascade"], c["route_only_same_v"], c["route_only_equal_spend"]
            out.append(
                f"| {name} | {_fmt(a['quality'])} | {_fmt(a['cost_usd'])} | "
                f"{_fmt(a['attempted_share'])} | {_fmt(a['kept_share'])} | "
                f"{_fmt(same['quality'])} at ${_fmt(same['cost_usd'])} | "
                f"{_fmt(eq['quality'])} at ${_fmt(eq['cost_usd'])} | "
                f"{_fmt(c['diff_quality'])} ({format_ci(c['diff_ci95'])}) |")
        out.append("")
    out += [
        "## Queries per expert",
        "",
        "| policy | " + " | ".join(result["experts"]) + " |",
        "|---" * (len(result["experts"]) + 1) + "|",
    ]
    for name in [*_routers(overall), "optimal"]:
        qpe = overall[name]["queries_per_expert"]
        out.append(f"| {name} | " + " | ".join(_fmt(qpe[e]) for e in result["experts"]) + " |")
    out.append("")
    for ds, res in result["per_dataset"].items():
        out += [f"## {ds}", "", markdown_table(res), ""]
    out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if result.get("routers"):
        out += ["", "## Routers", ""]
        out += [
            f"- `{n}`: {json.dumps(info, sort_keys=True)}" for n, info in result["routers"].items()
        ]
    return "\n".join(out) + "\n"


def write_report(result: dict[str, Any], outdir: Path) -> Path:
    """Write README.md, results.json and the plots into ``outdir``; return README's path."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    plot_trilemma(result, outdir / "trilemma.png")
    plot_per_dataset(result, outdir / "per_dataset.png")
    plot_queries_per_expert(result, outdir / "queries_per_expert.png")
    plots = ["trilemma.png", "per_dataset.png", "queries_per_expert.png"]
    if plot_cost_quality(result, outdir / "cost_quality.png"):
        plots.append("cost_quality.png")
    if plot_cascade(result, outdir / "cascade.png"):
        plots.append("cascade.png")
    (outdir / "results.json").write_text(
        json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    readme = outdir / "README.md"
    readme.write_text(markdown(result, plots), encoding="utf-8")
    return readme
