#!/usr/bin/env bash
# Repeated random splits of the committed table: for each seed (split, init, shuffling),
# train BERT-3L, MLP and 1NN on that seed's train split and evaluate on its test split.
# Usage: bash artifacts/report/expert_table_seeds/run.sh [SEEDS...]  (default 0 1 2 3 4)
# Writes runs/seeds/<seed>/{bert3,mlp,knn,results.json}; summarise.py reads them.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1
T=artifacts/expert_table.jsonl.gz
E=.venv/bin/edgeroute
for s in "${@:-0 1 2 3 4}"; do
  for seed in $s; do
    O=runs/seeds/$seed
    mkdir -p "$O"
    [ -f "$O/bert3/router.json" ] || $E train --table $T --router bert --metric correct \
      --max-length 128 --epochs 6 --layers 3 --seed "$seed" --no-progress --out "$O/bert3"
    [ -f "$O/mlp/router.json" ] || $E train --table $T --router mlp --metric correct \
      --seed "$seed" --no-progress --out "$O/mlp"
    [ -f "$O/knn/router.json" ] || $E train --table $T --router knn --metric correct \
      --max-length 128 --seed "$seed" --no-progress --out "$O/knn"
    $E evaluate --table $T --router "$O/bert3" "$O/mlp" "$O/knn" --json > "$O/results.json"
  done
done
