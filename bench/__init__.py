"""Benchmarks: each prints a table of medians and same-run ratios."""
