#!/usr/bin/env bash
# The public tables' classifier runs on the re-graded rows (issue #15), seeds 0-4: BERT-3L
# fine-tuned per seed (capped at 1200 training queries drawn evenly over datasets, 3 epochs,
# max length 128: uncapped it is hours per run on 2 cores), beside the irt router and the MLP
# that `artifacts/report/irt/study.py tables` trains on the full train split of the same seed.
# Seed 0 also trains 1NN and writes the Phase 2 reports ../routerbench/ and ../routerdc/.
# Order: `study.py tables` first (it writes the tables and trains irt and MLP per seed),
# then this script, then `study.py tables` again (it scores BERT-3L beside them) and
# `study.py report`. Usage: bash artifacts/report/public_seeds/run.sh [SEEDS...] (default
# 0 1 2 3 4; 27 min on 2 cores for the ten BERT runs); resumable (a router folder with
# router.json is not retrained).
# Tables: runs/irt/tables/{routerbench,routerdc}.jsonl.gz (study.py table_files(), from the
# pooled corpus). Routers: runs/irt/<table>/seed<S>/{bert3,knn}; router.json and
# train_log.json of seed 0 are copied to artifacts/routers/<table>/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export HF_HUB_OFFLINE=1
E=.venv/bin/edgeroute
for seed in ${@:-0 1 2 3 4}; do
  for t in routerbench routerdc; do
    T=runs/irt/tables/$t.jsonl.gz
    O=runs/irt/$t/seed$seed
    mkdir -p "$O"
    [ -f "$O/bert3/router.json" ] || { echo "$(date +%T) $t seed $seed: BERT-3L";
      $E train --table "$T" --router bert --metric correct --max-length 128 --epochs 3 \
        --layers 3 --max-train-queries 1200 --seed "$seed" --no-progress --out "$O/bert3"; }
    if [ "$seed" = 0 ]; then
      [ -f "$O/knn/router.json" ] || $E train --table "$T" --router knn --metric correct \
        --max-length 128 --seed 0 --no-progress --out "$O/knn"
      $E evaluate --table "$T" --router "$O/bert3" "$O/mlp" "$O/knn" "$O/irt" \
        --report "artifacts/report/$t" | tee "artifacts/report/$t/evaluate.txt"
      rm -rf "artifacts/routers/$t"
      for r in bert3 mlp knn irt; do
        mkdir -p "artifacts/routers/$t/$r"
        cp "$O/$r/router.json" "artifacts/routers/$t/$r/"
        [ ! -f "$O/$r/train_log.json" ] || cp "$O/$r/train_log.json" "artifacts/routers/$t/$r/"
      done
    fi
  done
done
echo "$(date +%T) done"
