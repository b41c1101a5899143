"""summary.md of the route-as-evaluated report, from the JSON files run.sh writes."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str) -> dict:
    return json.loads((HERE / name).read_text())


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def usd(x: float | None) -> str:
    return "-" if x is None else f"${x:.6f}"


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def replay_rows(name: str, r: dict, cloud: str) -> list[str]:
    d = r["daemon"]
    rows = [f"| {name}: daemon /v1/route | {pct(d['share'].get(cloud))} | "
            f"{num(d['quality_common'])} | {usd(d['expected_common_usd'])} | "
            f"{usd(d['cost_common_usd'])} |"]
    if "evaluate" in r:
        e = r["evaluate"]
        rows.append(f"| {name}: `evaluate`, same settings | {pct(e['share'].get(cloud))} | "
                    f"same choices on {pct(r['agreement'])} | "
                    "- | - |")
    return rows


def main() -> None:
    cal = load("calibrate.json")
    lengths = load("lengths.json")
    gpt4, at01, cheap = (load(f) for f in ("replay_gpt4.json", "replay_gpt4_at_0.01.json",
                                           "replay_cheap.json"))
    v = cal["chosen"]["usd_per_correct"]
    out = ["# Route as evaluated: the daemon's route call against `evaluate`", "",
           "Reproduce: `artifacts/report/route/run.sh`. Table: the committed table "
           "(`artifacts/expert_table.jsonl.gz`); router: irt, shipped settings, trained on "
           "its train split; device: the two default local experts + one cloud expert.", "",
           "## Answer lengths (chosen on validation, reported on test)", "",
           f"Chosen form: **{lengths['chosen']['form']}** (ridge {lengths['chosen']['lambda']})."
           " Figures on the test split: log-likelihood of the real lengths, mean absolute "
           "error in log tokens, and summed expected over summed real delivered tokens at "
           f"max_tokens {lengths['max_tokens']}.", "",
           "| form | loglik | MAE log | expected / real |", "| --- | ---: | ---: | ---: |"]
    for form, t in lengths["test"].items():
        out.append(f"| {form} | {num(t['loglik'])} | {num(t['mae_log'])} | "
                   f"{num(t['expected_over_real'])} |")
    c, t = cal["chosen"], cal["test"]
    out += ["", "## usd_per_correct, chosen on validation", "",
            f"The largest value sending fewer than half of the {cal['validation_queries']} "
            f"validation queries to GPT-4 (priced as the daemon prices them): **${v}** "
            f"(validation: cloud share {pct(c['cloud_share'])}, quality {num(c['quality'])}). "
            f"On the {cal['test_queries']} test queries: cloud share {pct(t['cloud_share'])}, "
            f"quality {num(t['quality'])}, realised cost {usd(t['cost_usd'])} a query.", "",
            "## The daemon's route call against evaluate (test split)", "",
            f"On the {gpt4['daemon']['common_queries']} test queries where every expert has "
            "an outcome (paired with always-X): quality, the daemon's expected cost and the "
            "realised cost of the same choices (the table's tokens at the configured prices, "
            "answers cut at max_tokens). The share is over all test queries.", "",
            "| policy | share to cloud | quality | expected $/query | realised $/query |",
            "| --- | ---: | ---: | ---: | ---: |"]
    out += replay_rows(f"GPT-4 at the default ${gpt4['usd_per_correct']}", gpt4,
                       "gpt-4-1106-preview")
    out += replay_rows("GPT-4 at $0.01", at01, "gpt-4-1106-preview")
    for e, a in gpt4["always"].items():
        out.append(f"| always {e} | - | {num(a['quality_common'])} | - | "
                   f"{usd(a['cost_common_usd'])} |")
    out += [""]
    for label, r in (("default", gpt4), ("$0.01", at01)):
        d = r["daemon"]
        gap = d["expected_cost_usd_where_realised"] / d["realised_capped_cost_usd"] - 1
        out.append(f"- {label}: same choice as `evaluate` on {pct(r.get('agreement'))} of the "
                   f"{d['queries']} queries; over the {d['priced_queries']} whose chosen "
                   f"expert has a recorded answer, expected {usd(d['expected_cost_usd_where_realised'])}"
                   f" against realised {usd(d['realised_capped_cost_usd'])} a query "
                   f"({100 * gap:+.0f}%).")
    out += ["",
            "## A cheap cloud expert without a profile", "",
            "gpt-4o-mini's prices ($0.15 / $0.60 per 1M tokens) and the prior profile; "
            "Mixtral-8x7B's real answers (from the table) stand in for its answers.", "",
            "| policy | share to cloud | quality | expected $/query | realised $/query |",
            "| --- | ---: | ---: | ---: | ---: |"]
    out += replay_rows(f"gpt-4o-mini at ${cheap['usd_per_correct']}", cheap, "gpt-4o-mini")
    for e, a in cheap["always"].items():
        out.append(f"| always {e} | - | {num(a['quality_common'])} | - | "
                   f"{usd(a['cost_common_usd'])} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
