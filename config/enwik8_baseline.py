# Baseline twin of config/train_enwik8.py: the same model and schedule with plain causal attention
# (the extra per-block position embeddings stay, so the twins differ only in the masks).
# python train.py config/enwik8_baseline.py
base = "train_enwik8.py"
out_dir = "out-enwik8-baseline"
use_adaptive_attention = False
use_triangle_wave_masking = False
