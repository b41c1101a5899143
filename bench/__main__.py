"""``make bench``: every benchmark in one run, one table each, medians and same-run
ratios only. Pass ``--quick`` for fewer repetitions.

    .venv/bin/python -m bench [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import platform
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args(argv)
    quick = args.quick
    suites: list[tuple[str, list[str]]] = [
        ("bench.router_latency", ["--iters", "100"] if quick else []),
        ("bench.daemon_throughput", ["--rounds", "2" if quick else "6"]),
        ("bench.local_batching", ["--rounds", "2" if quick else "3"]),
        ("bench.local_batching", ["--rounds", "2" if quick else "3", "--case", "distinct"]),
        ("bench.decode_steps", ["--rounds", "2" if quick else "3"]),
        ("bench.bridge_overhead", ["--reps", "10" if quick else "25"]),
        ("bench.startup", ["--runs", "2" if quick else "3"]),
        ("bench.load", ["--clients", "50", "--seconds", "20" if quick else "60"]),
        ("bench.load", ["--clients", "50", "--seconds", "20" if quick else "60",
                        "--distinct"]),
    ]
    print(f"edgeroute benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{platform.machine()}, {platform.python_version()}")
    failed = 0
    for module, module_args in suites:
        print(f"\n== {module} {' '.join(module_args)}")
        try:
            failed += int(importlib.import_module(module).main(module_args) or 0)
        except Exception as exc:  # one broken bench must not hide the others
            print(f"  FAILED: {type(exc).__name__}: {exc}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
