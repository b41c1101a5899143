#!/usr/bin/env bash
# The committed table's Phase 2 report (this folder): BERT-Router 6 and 3 layers, MLP and
# 1NN trained on seed 0's train split (80%), evaluated with the baselines on its test split.
# Usage: bash artifacts/report/expert_table/run.sh   (about 16 min on 2 cores; resumable:
# a router folder with router.json is not retrained). Routers go to runs/expert_table/;
# their router.json and train_log.json are copied to artifacts/routers/expert_table/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1
T=artifacts/expert_table.jsonl.gz
E=.venv/bin/edgeroute
O=runs/expert_table
mkdir -p "$O"
[ -f "$O/bert6/router.json" ] || $E train --table $T --router bert --metric correct \
  --max-length 128 --epochs 6 --layers 6 --seed 0 --no-progress --out "$O/bert6"
[ -f "$O/bert3/router.json" ] || $E train --table $T --router bert --metric correct \
  --max-length 128 --epochs 6 --layers 3 --seed 0 --no-progress --out "$O/bert3"
[ -f "$O/mlp/router.json" ] || $E train --table $T --router mlp --metric correct \
  --seed 0 --no-progress --out "$O/mlp"
[ -f "$O/knn/router.json" ] || $E train --table $T --router knn --metric correct \
  --max-length 128 --seed 0 --no-progress --out "$O/knn"
$E evaluate --table $T --router "$O/bert6" "$O/bert3" "$O/mlp" "$O/knn" \
  --report artifacts/report/expert_table | tee artifacts/report/expert_table/evaluate.txt
for r in bert6 bert3 mlp knn; do
  mkdir -p "artifacts/routers/expert_table/$r"
  cp "$O/$r/router.json" "$O/$r/train_log.json" "artifacts/routers/expert_table/$r/"
done
