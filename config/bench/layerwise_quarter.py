# docs/layerwise.md §1 schedule "quarter" for bench.py / results/layerwise/layerwise_bench.py entries (label = file stem)
variant = "layerwise"
schedule = "quarter"
