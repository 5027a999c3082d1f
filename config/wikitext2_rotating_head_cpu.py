# Rotating-head (learned frequencies) twin of config/wikitext2_gpt2_variants_cpu.py; --rotatinghead=gp for the fixed ones.
# OMP_NUM_THREADS=1 python train.py config/wikitext2_rotating_head_cpu.py
base = "wikitext2_gpt2_variants_cpu.py"  # same data, shape, iterations and seed as the baseline twin
variant = "rotating_head"
out_dir = "out-wikitext2-rotating-head-cpu"
rotatinghead = "lr"
