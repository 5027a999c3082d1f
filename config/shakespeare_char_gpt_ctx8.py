# The seed's char-level GPT config (SPEC §4.1 table): context 8, d 384, 6 heads, 6 layers, dropout 0.2, batch 4, on
# tiny Shakespeare (65 chars). The seed has no training loop; the optimiser settings are the lecture's.
# python data/shakespeare_char/prepare.py --source input.txt && python train.py config/shakespeare_char_gpt_ctx8.py
variant = "char_gpt"
out_dir = "out-shakespeare-char-gpt-ctx8"
dataset = "shakespeare_char"
block_size = 8
batch_size = 4
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
