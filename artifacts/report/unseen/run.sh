#!/bin/bash
# Leave-one-source-out study, end to end (seeded; every step resumable: rerun to continue).
# From the repository root: bash artifacts/report/unseen/run.sh  (log: /tmp/unseen/study.log)
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PYTHONPATH=$PWD
PY="nice -n 19 .venv/bin/python"
E=".venv/bin/python -m agent"
mkdir -p runs/unseen /tmp/unseen
# the pooled corpus with the new tables (the Makefile's `router` target, into runs/unseen/)
[ -f runs/unseen/public.jsonl.gz ] || nice -n 19 $E table import all --no-bertsim --out runs/unseen/public.jsonl.gz
[ -f runs/unseen/public.regraded.jsonl.gz ] || nice -n 19 $E table regrade runs/unseen/public.jsonl.gz --out runs/unseen/public.regraded.jsonl.gz
[ -f runs/unseen/pooled.jsonl.gz ] || nice -n 19 $E table pool artifacts/expert_table.jsonl.gz runs/unseen/public.regraded.jsonl.gz --out runs/unseen/pooled.jsonl.gz
for step in corpus folds fewshot choose cost ceiling full adaptive report; do
  $PY artifacts/report/unseen/study.py $step
done
