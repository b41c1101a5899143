"""``edgeroute outcomes export [--json]`` and ``edgeroute outcomes purge --yes``: what the
device keeps of its answers (``agent.outcomes``), shown whole or deleted.

``export`` prints one line per outcome (completion id, time, expert, source, score,
weight); ``--json`` one JSON object per answer, with its u(q), d(q) and every outcome (and
the text, where ``outcomes.store_text`` kept it). ``purge`` deletes every answer and
outcome; the refit history (``edgeroute profile history``) stays, so a revert still works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from agent.outcomes import OUTCOMES_NAME, OutcomesError, OutcomeStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="outcomes_command", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="print every stored answer's outcomes")
    e.add_argument("--json", action="store_true",
                   help="one JSON object per answer: features, outcomes (and text if kept)")
    p = sub.add_parser("purge", help="delete every stored answer and outcome")
    p.add_argument("--yes", action="store_true", help="really delete them")


def run(args: argparse.Namespace) -> int:
    from agent.settings import load_settings

    settings = load_settings()
    path = settings.paths.data_dir / OUTCOMES_NAME
    if not path.is_file():
        print(f"no outcomes stored yet ({path})", file=sys.stderr)
        return 0
    store = OutcomeStore.of(settings)
    try:
        if args.outcomes_command == "purge":
            if not args.yes:
                raise OutcomesError(f"purge deletes every answer and outcome in {path}; pass "
                                    "--yes to go ahead")
            n = store.purge()
            print(f"deleted {n} answers and their outcomes from {path}", file=sys.stderr)
            return 0
        for row in store.export():
            if args.json:
                print(json.dumps(row, separators=(",", ":")))
                continue
            for o in row["outcomes"]:
                at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(o["ts"]))
                print(f"{row['id']}\t{at}\t{o['expert']}\t{o['source']}\t{o['score']:.3f}\t"
                      f"{o['weight']:g}")
    finally:
        store.close()
    return 0
