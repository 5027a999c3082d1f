#!/usr/bin/env bash
# Every number in results/*/report.md (and the README's summary lines), regenerated: the core results, then each
# variant family's study. Each run.sh prints its tables and says where its outputs went (under /tmp). Total: a few
# hours on 2 cores, plus about 2.4 h for the three-seed comparison (results/compare/compare.py), which skips the runs
# already in results/compare/runs.
set -euo pipefail
cd "$(dirname "$0")"
for study in core gpt2_variants adaptive_span layerwise foundational; do
  echo "=== results/$study/run.sh"
  bash "$study/run.sh"
done
echo "=== results/compare/compare.py"
python compare/compare.py
