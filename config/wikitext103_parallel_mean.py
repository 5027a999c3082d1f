# Parallel GPT-2 medium, mean merge (docs/gpt2_variants.md §2; hub parallel-mean-bottleneck-gpt2-medium-wikitext, their ppl 24.48).
# python train.py config/wikitext103_parallel_mean.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "parallel"
out_dir = "out-wikitext103-parallel-mean"
bottleneck_method = "mean"
pair_impl = "sequential"
