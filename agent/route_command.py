"""``edgeroute route "text" [--model M] [--max-tokens N] [--json]``: who would answer, and
why, without answering: the daemon's decision made in-process (``agent.runtime.
build_decider``), no model loaded, no expert called, the ledger only read.

What it cannot know is what a running daemon has measured (latencies, the correction of
answer lengths, open breakers); ``POST /v1/route`` on the daemon includes those.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the user's query")
    parser.add_argument("--model", default="auto", help="'auto' (route) or an expert's name")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="the request's max_tokens (default: server.default_max_tokens)")
    parser.add_argument("--json", action="store_true", help="print the routing object as JSON")


def _table(routing: dict[str, Any]) -> list[str]:
    lines = [f"  {'expert':<28} {'P(correct)':>10} {'exp. cost $':>12} {'exp. tokens':>11} "
             f"{'worst $':>10} {'utility':>8}  feasible"]
    for name, a in routing["experts"].items():
        p = "-" if a["p_correct"] is None else f"{a['p_correct']:.3f}"
        u = "-" if a["utility"] is None else f"{a['utility']:.3f}"
        why = "yes" if a["feasible"] else f"no: {a['rejected']}"
        mark = "*" if name == routing["expert"] else " "
        lines.append(f"{mark} {name:<28} {p:>10} {a['expected_cost_usd']:>12.6f} "
                     f"{a['expected_output_tokens']:>11.1f} {a['worst_case_usd']:>10.6f} "
                     f"{u:>8}  {why}")
    return lines


def run(args: argparse.Namespace) -> int:
    from agent.cli import CliError
    from agent.runtime import build_decider
    from agent.schemas import ChatRequest, sampling_params
    from agent.settings import load_settings

    if not args.text.strip():
        raise CliError("the query text is empty; pass the question as an argument")
    settings = load_settings()
    req = ChatRequest.model_validate(
        {"model": args.model, "messages": [{"role": "user", "content": args.text}],
         "max_tokens": args.max_tokens})
    decider, ledger = build_decider(settings)
    try:
        decision = decider.decide(req.model, req.plain_messages(),
                                  sampling_params(req, settings.server), served=False)
    finally:
        ledger.close()
    routing = decision.as_dict()
    if args.json:
        print(json.dumps({"model": decision.expert, "routing": routing}, indent=2))
        return 0
    print(f"expert: {decision.expert} ({decision.reason})")
    print("\n".join(_table(routing)))
    return 0
