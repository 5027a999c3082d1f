# The adaptive-span recipe of docs/adaptive_span.md §7: enwik8 bytes, 12 layers, 8 heads, 512 wide, context 512, batch 64, 150k
# iterations, adaptive span + periodic (triangle-wave) masking with its span regulariser.
# python data/enwik8/prepare.py && python train.py config/train_enwik8.py
# Fair twins: config/enwik8_baseline.py (plain attention) and config/enwik8_span_only.py (no periodic mask).
out_dir = "out-enwik8"
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
use_triangle_wave_masking = True
softness_span_mask = 32.0
period_min_triangle_wave_masking = 2.0
period_max_triangle_wave_masking = 8.0
span_reg = 4e-6
block_pos_emb = True  # extra learned positions before every block but the first (docs/adaptive_span.md §1), in all three twins
