# TinyStories with GPT-2 BPE, a small GPT trained from scratch (8 layers, 8 heads, 512 wide, context 512).
# python data/tinystories/prepare.py && python train.py config/train_tinystories.py
out_dir = "out-tinystories"
dataset = "tinystories"
eval_interval = 1000
eval_iters = 100
log_interval = 50

batch_size = 32
gradient_accumulation_steps = 4
block_size = 512
n_layer = 8
n_head = 8
n_embd = 512
dropout = 0.0
bias = False

learning_rate = 6e-4
min_lr = 6e-5
beta2 = 0.95
weight_decay = 0.1
warmup_iters = 500
max_iters = 20000
lr_decay_iters = 20000
compile = True
