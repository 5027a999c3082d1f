# Duo-predict twin of config/wikitext2_gpt2_variants_cpu.py at the same ORIGINAL tokens per step (128 originals are
# 255 interleaved positions, so about twice the compute per step).
# OMP_NUM_THREADS=1 python train.py config/wikitext2_duo_predict_cpu.py
base = "wikitext2_gpt2_variants_cpu.py"  # same data, shape, iterations and seed as the baseline twin
variant = "duo_predict"
out_dir = "out-wikitext2-duo-predict-cpu"
