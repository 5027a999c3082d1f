# The lecture's char-level GPT (Karpathy, "Let's build GPT", gpt.py): batch 64, context 256, d 384, 6 heads, 6 layers,
# dropout 0.2, AdamW lr 3e-4 constant, 5000 iterations, eval every 500 over 200 batches; the lecture reports val loss ~1.48.
# python data/shakespeare_char/prepare.py --source input.txt && python train.py config/shakespeare_char_gpt_ctx256.py
variant = "char_gpt"
out_dir = "out-shakespeare-char-gpt-ctx256"
dataset = "shakespeare_char"
block_size = 256
batch_size = 64
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = True

learning_rate = 3e-4  # the lecture: AdamW (torch defaults: betas 0.9/0.999, weight decay 0.01), constant lr
decay_lr = False
beta2 = 0.999
weight_decay = 0.01
grad_clip = 0.0
max_iters = 5000
eval_interval = 500
eval_iters = 200
log_interval = 100
