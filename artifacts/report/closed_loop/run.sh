#!/bin/bash
# The closed-loop SIMULATION (issue #29), end to end, from the repository root (about 6 min
# on 2 cores): bash artifacts/report/closed_loop/run.sh   (progress: runs/closed_loop/full/progress.log)
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PYTHONPATH=$PWD
mkdir -p runs/closed_loop
[ -f runs/closed_loop/routerbench.jsonl.gz ] || .venv/bin/python -m agent table import routerbench --no-bertsim --out runs/closed_loop/routerbench.jsonl.gz
.venv/bin/python artifacts/report/closed_loop/simulate.py --table runs/closed_loop/routerbench.jsonl.gz --work runs/closed_loop/full --out artifacts/report/closed_loop
