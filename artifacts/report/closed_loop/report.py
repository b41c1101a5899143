"""The closed-loop simulation's report: ``results.json``, ``quality.png`` and ``summary.md``
from ``simulate.py``'s arms (see its docstring: a simulation, no real users)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

BAR_OUTCOMES = 500


def interval(diff: np.ndarray, seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """95% paired bootstrap interval of a per-query difference's mean."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _at(arm: dict[str, Any], outcomes: int) -> dict[str, Any]:
    """The arm's last checkpoint with at most ``outcomes`` outcomes."""
    found = [c for c in arm["checkpoints"] if c["outcomes_target"] <= outcomes]
    return found[-1]


def figures(results: dict[str, Any]) -> dict[str, Any]:
    static, oracle = results["static"], results["oracle"]
    gap = oracle["quality"] - static["quality"]
    base = np.array(static["per_query"])
    out: dict[str, Any] = {"static": static["quality"], "oracle": oracle["quality"],
                           "gap": gap, "arms": {}}
    for name in ("feedback_10", "shadow_5"):
        arm = results[name]
        at = _at(arm, BAR_OUTCOMES)
        lo, hi = interval(np.array(at["per_query"]) - base)
        final = arm["checkpoints"][-1]
        worst = min(c["quality"] for c in arm["checkpoints"])
        out["arms"][name] = {
            "at_500": at["quality"], "closed_at_500": (at["quality"] - static["quality"]) / gap,
            "vs_static_at_500_ci95": [lo, hi], "queries_at_500": at["queries"],
            "final": final["quality"], "final_outcomes": final["outcomes"],
            "closed_final": (final["quality"] - static["quality"]) / gap,
            "worst_minus_static": worst - static["quality"],
            "bar": (at["quality"] - static["quality"]) >= 0.5 * gap
            and final["quality"] >= static["quality"]}
    return out


def _strip(results: dict[str, Any]) -> dict[str, Any]:
    """The results without per-query arrays (kept in the work dir)."""
    out: dict[str, Any] = {}
    for k, v in results.items():
        if isinstance(v, dict) and "arm" in v and "checkpoints" in v:
            out[k] = {**v, "checkpoints": [{kk: vv for kk, vv in c.items() if kk != "per_query"}
                                           for c in v["checkpoints"]]}
        elif isinstance(v, dict) and "arm" in v:
            out[k] = {kk: vv for kk, vv in v.items() if kk != "per_query"}
        else:
            out[k] = v
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, label, style in (("feedback_10", "feedback on 10% of queries", "o-"),
                               ("shadow_5", "shadow grading on 5% (simulated judge)", "s-")):
        cps = results[name]["checkpoints"]
        ax.plot([c["outcomes"] for c in cps], [c["quality"] for c in cps], style, label=label,
                markersize=4)
    ax.axhline(results["static"]["quality"], color="grey", ls="--", label="static profiles")
    ax.axhline(results["oracle"]["quality"], color="black", ls=":", label="oracle profile")
    mid = (results["static"]["quality"] + results["oracle"]["quality"]) / 2
    ax.axhline(mid, color="grey", ls=(0, (1, 4)), lw=0.8, label="half the gap")
    ax.axvline(BAR_OUTCOMES, color="grey", lw=0.6)
    ax.set_xlabel("stored outcomes")
    ax.set_ylabel("routing quality: correct - cost / usd_per_correct")
    ax.set_title("SIMULATION: 'gpt4' serves WizardLM-13B under GPT-4's profile", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(results: dict[str, Any], figs: dict[str, Any]) -> str:
    cfg = results["config"]
    s, o = results["static"], results["oracle"]
    lines = [
        "# Closed loop: the device learns from its own traffic (a SIMULATION)",
        "",
        "No real users exist here: this replays a public table (RouterBench's slice) through "
        "a real daemon's `POST /v1/route`, and the outcomes come from the table's own grades. "
        "See `simulate.py` for the set-up; `run.sh` reproduces it.",
        "",
        "Device: `local` (a GGUF named `mistral-7b-chat.gguf`: Mistral-7B-chat's shipped "
        "profile and rows) and `gpt4` (model id `gpt-4-1106-preview`: GPT-4's shipped profile "
        "and price, $10/$30 per 1M tokens) serving **WizardLM-13B's** rows. "
        f"`usd_per_correct` ${cfg['usd_per_correct']}; quality = correct - cost / "
        f"usd_per_correct, on {len(s['per_query']) if 'per_query' in s else '?'} held-out "
        "queries (RouterBench test files).",
        "",
        "| arm | outcomes | stream queries | quality | correct | cost $/query | gpt4 share | "
        "profiles applied |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| static | 0 | 0 | {s['quality']:.4f} | {s['correct']:.4f} | {s['cost_usd']:.6f} | "
        f"{s['gpt4_share']:.1%} | |",
        f"| oracle | - | - | {o['quality']:.4f} | {o['correct']:.4f} | {o['cost_usd']:.6f} | "
        f"{o['gpt4_share']:.1%} | |",
    ]
    for name in ("feedback_10", "shadow_5"):
        for c in results[name]["checkpoints"]:
            lines.append(f"| {name} | {c['outcomes']} | {c['queries']} | {c['quality']:.4f} | "
                         f"{c['correct']:.4f} | {c['cost_usd']:.6f} | {c['gpt4_share']:.1%} | "
                         f"{', '.join(c['applied']) or '-'} |")
    lines += ["", f"Gap static -> oracle: {figs['gap']:+.4f}.", ""]
    for name, a in figs["arms"].items():
        lo, hi = a["vs_static_at_500_ci95"]
        lines.append(
            f"- **{name}**: at {BAR_OUTCOMES} outcomes ({a['queries_at_500']} queries) quality "
            f"{a['at_500']:.4f}, {a['closed_at_500']:.0%} of the gap closed (vs static "
            f"{a['at_500'] - s['quality']:+.4f}, 95% paired bootstrap [{lo:+.4f}, {hi:+.4f}]); "
            f"after {a['final_outcomes']} outcomes {a['final']:.4f} ({a['closed_final']:.0%}); "
            f"lowest checkpoint vs static {a['worst_minus_static']:+.4f}. Bar (half the gap by "
            f"{BAR_OUTCOMES}, never ending below static): "
            + ("**met**" if a["bar"] else "**not met**"))
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(results)
    (out / "results.json").write_text(json.dumps({**_strip(results), "figures": figs},
                                                 indent=1) + "\n")
    plot(results, out / "quality.png")
    (out / "summary.md").write_text(summary(results, figs))
    print((out / "summary.md").read_text())
