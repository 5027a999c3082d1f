# WikiText-103 with GPT-2 BPE at GPT-2 medium scale, trained from scratch as the parallel_transformer family was
# (docs/gpt2_variants.md §0): 24 layers, 16 heads, 1024 wide, context 1024, dropout 0.1, 64 x 1024 tokens per step, AdamW
# lr 1e-4 (betas 0.9/0.999, weight decay 0.01), 10% linear warmup then linear decay, about 5 epochs.
# python data/wikitext103/prepare.py && torchrun --standalone --nproc_per_node=8 train.py config/train_wikitext103.py
out_dir = "out-wikitext103"
dataset = "wikitext103"
eval_interval = 500
eval_iters = 100
log_interval = 50

batch_size = 8
gradient_accumulation_steps = 8  # x 8 x 1024 = 65,536 tokens per step
block_size = 1024
n_layer = 24
n_head = 16
n_embd = 1024
dropout = 0.1
bias = True

learning_rate = 1e-4
min_lr = 0.0
beta1 = 0.9
beta2 = 0.999
weight_decay = 0.01
grad_clip = 1.0
lr_schedule = "linear"
max_iters = 8900  # 5 epochs of 116.7M training tokens
lr_decay_iters = 8900
warmup_iters = 890
compile = True
