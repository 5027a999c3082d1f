# Drift + diffusion twin of config/wikitext2_gpt2_variants_cpu.py.
# OMP_NUM_THREADS=1 python train.py config/wikitext2_drift_diffusion_cpu.py
base = "wikitext2_gpt2_variants_cpu.py"  # same data, shape, iterations and seed as the baseline twin
variant = "drift_diffusion"
out_dir = "out-wikitext2-drift-diffusion-cpu"
