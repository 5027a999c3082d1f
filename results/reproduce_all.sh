#!/usr/bin/env bash
# Every number in results/*.md (and the README's summary lines), regenerated: the core results, then each variant family's results file. CPU sizes.
# Each script prints its tables and says where its outputs went (under /tmp). Total: a few hours on 2 cores, plus about
# 2.4 h for the three-seed comparison (results/compare.py), which skips the runs already in results/compare/runs.
set -euo pipefail
cd "$(dirname "$0")"
for script in core.sh gpt2_variants.sh adaptive_span.sh layerwise.sh foundational.sh; do
  echo "=== results/$script"
  bash "$script"
done
echo "=== results/compare.py"
python compare.py
