# Parallel twin (2 stages of 2 blocks, mean merge) of config/wikitext2_gpt2_variants_cpu.py; --bottleneck_method=concat for the other.
# OMP_NUM_THREADS=1 python train.py config/wikitext2_parallel_cpu.py
base = "wikitext2_gpt2_variants_cpu.py"  # same data, shape, iterations and seed as the baseline twin
variant = "parallel"
out_dir = "out-wikitext2-parallel-cpu"
bottleneck_method = "mean"
