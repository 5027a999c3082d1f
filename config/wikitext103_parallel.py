# Parallel GPT-2 medium, concat bottleneck (docs/gpt2_variants.md §2; hub parallel-gpt2-medium-wikitext, their ppl 25.73):
# 12 stages of 2 parallel blocks, one Linear(2048, 1024) shared by all stages.
# python train.py config/wikitext103_parallel.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "parallel"
out_dir = "out-wikitext103-parallel"
bottleneck_method = "concat"
pair_impl = "sequential"
