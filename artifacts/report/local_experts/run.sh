#!/usr/bin/env bash
# The local experts' report (this folder): the committed table narrowed to the two local
# experts, metric BERTSim; BERT-Router 6 and 3 layers, MLP and 1NN on seed 0's train split,
# evaluated with the baselines on its test split. About 5 min on 2 cores; resumable.
# Usage: bash artifacts/report/local_experts/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1
E=.venv/bin/edgeroute
O=runs/local_experts
T=$O/local.jsonl.gz
mkdir -p "$O"
[ -f "$T" ] || $E table select artifacts/expert_table.jsonl.gz \
  --experts qwen2.5-coder-0.5b,smollm2-135m --out "$T"
[ -f "$O/local-bert6/router.json" ] || $E train --table "$T" --router bert --metric bertsim \
  --max-length 128 --epochs 6 --layers 6 --seed 0 --no-progress --out "$O/local-bert6"
[ -f "$O/local-bert3/router.json" ] || $E train --table "$T" --router bert --metric bertsim \
  --max-length 128 --epochs 6 --layers 3 --seed 0 --no-progress --out "$O/local-bert3"
[ -f "$O/local-mlp/router.json" ] || $E train --table "$T" --router mlp --metric bertsim \
  --seed 0 --no-progress --out "$O/local-mlp"
[ -f "$O/local-knn/router.json" ] || $E train --table "$T" --router knn --metric bertsim \
  --max-length 128 --seed 0 --no-progress --out "$O/local-knn"
$E evaluate --table "$T" --router "$O/local-bert6" "$O/local-bert3" "$O/local-mlp" \
  "$O/local-knn" --report artifacts/report/local_experts \
  | tee artifacts/report/local_experts/evaluate.txt
