# Span-only twin of config/train_enwik8.py: adaptive span without the periodic (triangle-wave) mask.
# python train.py config/enwik8_span_only.py
base = "train_enwik8.py"
out_dir = "out-enwik8-span-only"
use_triangle_wave_masking = False
