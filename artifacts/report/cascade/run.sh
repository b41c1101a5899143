#!/bin/bash
# The local-first cascade on the committed (re-graded, confidence-scored) table, issue #18.
#   1. an irt router with the shipped settings, trained on the table's train split
#      (validation carved from it, never trained on; test held out);
#   2. `calibrate --policy cascade`: band, threshold and signal chosen on validation at the
#      default usd_per_correct, reported on test beside route-only (same V, equal spend);
#   3. `evaluate --report`: the daemon's defaults replayed on test, with the curves.
# Reproduce: artifacts/report/cascade/run.sh (about 2 minutes with a warm embedding cache).
set -euo pipefail
cd "$(dirname "$0")/../../.."
E=${EDGEROUTE:-.venv/bin/edgeroute}
T=artifacts/expert_table.jsonl.gz
O=runs/cascade
OUT=artifacts/report/cascade
mkdir -p $O
$E train --table $T --router irt --metric correct --layers 1 --max-length 128 --seed 0 \
  --out $O/irt
$E calibrate --table $T --router $O/irt --policy cascade --json > $OUT/calibrate.json
$E calibrate --table $T --router $O/irt --policy cascade | tee $OUT/calibrate.txt
$E evaluate --table $T --router $O/irt --report $OUT/evaluate 2> $OUT/evaluate.txt >/dev/null
cat $OUT/evaluate.txt
