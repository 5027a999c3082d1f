# Span-only twin of config/train_enwik8.py: adaptive span without the periodic (triangle-wave) mask.
# python train.py config/enwik8_span_only.py
out_dir = "out-enwik8-span-only"
dataset = "enwik8"
eval_interval = 1000
eval_iters = 200
log_interval = 100
always_save_checkpoint = True

batch_size = 64
gradient_accumulation_steps = 1
block_size = 512
n_layer = 12
n_head = 8
n_embd = 512
dropout = 0.2
bias = False

learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.99
weight_decay = 0.1
grad_clip = 1.0
warmup_iters = 100
max_iters = 150000
lr_decay_iters = 150000
compile = True

variant = "adaptive_span"
use_adaptive_attention = True
use_triangle_wave_masking = False
softness_span_mask = 32.0
period_min_triangle_wave_masking = 2.0
period_max_triangle_wave_masking = 8.0
span_reg = 4e-6
block_pos_emb = True  # extra learned positions before every block but the first (SPEC §2.1), in all three twins
