# Small character-level GPT on tiny Shakespeare that trains on a laptop CPU in minutes (nanoGPT's CPU recipe).
# python data/shakespeare_char/prepare.py --source input.txt && python train.py config/train_shakespeare_char_cpu.py
out_dir = "out-shakespeare-char-cpu"
dataset = "shakespeare_char"
device = "cpu"
compile = False
eval_interval = 250
eval_iters = 200  # 200 x 12 x 64 = 154k val tokens per estimate (nanoGPT used 20: too noisy to compare runs)
log_interval = 10
always_save_checkpoint = False

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
