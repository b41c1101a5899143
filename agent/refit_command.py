"""``edgeroute profile update|history|revert``: the command line of ``agent.refit``. The
``profile`` command belongs to the pipeline's entry point (``export.profile_fit``), which
hands these three sub-commands here: the work is the daemon's own code, as a scheduled
refit inside the daemon runs it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from agent.outcomes import OUTCOMES_NAME, OutcomesError, OutcomeStore, refit_line

RELOAD_HINT = "reload a running daemon (SIGHUP or POST /admin/router/reload) to use them"


def add_arguments(sub: Any) -> None:
    """The three sub-parsers, on ``profile``'s sub-parsers action."""
    u = sub.add_parser("update", help="refit this device's profiles from its stored outcomes "
                       "(kept only when better on held-back outcomes)")
    u.add_argument("names", nargs="*", help="experts to refit (default: every configured one)")
    u.add_argument("--json", action="store_true", help="print the result as JSON")
    h = sub.add_parser("history", help="every profile update and revert, with its figures")
    h.add_argument("--json", action="store_true", help="print the history as JSON")
    h.add_argument("--last", type=int, default=20, help="show the newest N (default 20)")
    r = sub.add_parser("revert", help="restore the device profiles as they were before the "
                       "last applied update, byte for byte")
    r.add_argument("--force", action="store_true",
                   help="even when the file changed since that update wrote it")


def run(args: argparse.Namespace) -> int:
    from agent.settings import load_settings

    settings = load_settings()
    path = settings.paths.data_dir / OUTCOMES_NAME
    if not path.is_file():
        if args.profile_command == "revert":
            raise OutcomesError("no profile update to revert: no outcomes store yet "
                                f"({path})")
        print(f"no outcomes stored yet ({path}): nothing to refit", file=sys.stderr)
        return 0
    store = OutcomeStore.of(settings)
    try:
        if args.profile_command == "update":
            return _update(settings, store, args)
        if args.profile_command == "history":
            return _history(store, args)
        return _revert(settings, store, args)
    finally:
        store.close()


def _update(settings: Any, store: OutcomeStore, args: argparse.Namespace) -> int:
    from agent.refit import update

    res = update(settings, store, only=list(args.names) or None)
    if args.json:
        print(json.dumps({"refit_id": res.refit_id, "applied": res.applied,
                          "experts": {n: f.as_dict() for n, f in res.fits.items()},
                          "skipped": res.skipped}, indent=1))
        return 0
    print(f"{'expert':<28} {'outcomes':>8} {'fit/held':>9} {'log-loss before':>16} "
          f"{'after':>7} {'Brier before':>13} {'after':>7}  result")
    for name, f in res.fits.items():
        print(f"{name:<28} {f.outcomes:>8} {f'{f.fitted}/{f.held}':>9} "
              f"{f.before['log_loss']:>16.4f} {f.after['log_loss']:>7.4f} "
              f"{f.before['brier']:>13.4f} {f.after['brier']:>7.4f}  "
              + ("applied" if f.applied else "kept the old profile (not better held back)"))
    for name, why in res.skipped.items():
        print(f"{name:<28} skipped: {why}")
    if res.applied:
        print(f"update {res.refit_id}: {', '.join(res.applied)} -> {res.path}; {RELOAD_HINT}; "
              "`edgeroute profile revert` undoes it", file=sys.stderr)
    elif res.refit_id is not None:
        print(f"update {res.refit_id}: no profile changed", file=sys.stderr)
    else:
        print("nothing to refit yet", file=sys.stderr)
    return 0


def _history(store: OutcomeStore, args: argparse.Namespace) -> int:
    rows = store.refits(last=args.last)
    if args.json:
        print(json.dumps([refit_line(r) for r in rows], indent=1))
        return 0
    if not rows:
        print("no profile updates yet", file=sys.stderr)
    for r in rows:
        at = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(r.ts))
        undone = f", undone by {r.undone_by}" if r.undone_by else ""
        if r.action == "revert":
            print(f"{r.id:>4} {at} revert of update {r.summary.get('reverts')}")
            continue
        print(f"{r.id:>4} {at} update, {'applied' if r.applied else 'nothing applied'}{undone}")
        for name, f in r.summary.get("experts", {}).items():
            print(f"       {name}: {f['outcomes']} outcomes, held-back log-loss "
                  f"{f['before']['log_loss']:.4f} -> {f['after']['log_loss']:.4f}, Brier "
                  f"{f['before']['brier']:.4f} -> {f['after']['brier']:.4f}: "
                  + ("applied" if f["applied"] else "kept"))
    return 0


def _revert(settings: Any, store: OutcomeStore, args: argparse.Namespace) -> int:
    from agent.refit import revert

    done = revert(settings, store, force=args.force)
    what = "removed (there was none before)" if done.before is None else "restored"
    print(f"undid update {done.id}: device profiles {what}; {RELOAD_HINT}", file=sys.stderr)
    return 0
