"""``edgeroute feedback ID SCORE``: score an answer from the shell, as ``POST
/v1/feedback`` does (SCORE: 0 to 1, or ``up`` / ``down``). Written to this device's outcomes
store directly, so it works without a running daemon; an unknown id is an error naming it,
a second score for one id replaces the first."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the reply's id (chatcmpl-...)")
    parser.add_argument("score", help="0 to 1, or up / down")


def run(args: argparse.Namespace) -> int:
    from agent.metrics import Metrics
    from agent.outcome_recorder import OutcomeRecorder, feedback_score
    from agent.outcomes import OUTCOMES_NAME, OutcomesError, OutcomeStore
    from agent.settings import load_settings

    settings = load_settings()
    if not (settings.outcomes.enabled and settings.outcomes.feedback):
        raise OutcomesError("feedback is off on this device (outcomes.enabled, "
                            "outcomes.feedback)")
    thumbs = args.score if args.score in ("up", "down") else None
    try:
        score = feedback_score(None if thumbs else float(args.score), thumbs)
    except ValueError as exc:
        raise OutcomesError(f"score {args.score!r}: give a number from 0 to 1, or up / down"
                            ) from exc
    path = settings.paths.data_dir / OUTCOMES_NAME
    if not path.is_file():
        raise OutcomesError(f"no answer with id {args.id!r} on this device: no answers are "
                            f"stored yet ({path})")
    store = OutcomeStore.of(settings)
    try:
        got = OutcomeRecorder(settings.outcomes, store, Metrics()).feedback(args.id, score)
    finally:
        store.close()
    verb = "replaced the earlier score" if got["replaced"] else "stored"
    print(f"{args.id} ({got['expert']}): score {score:g} {verb}", file=sys.stderr)
    return 0
