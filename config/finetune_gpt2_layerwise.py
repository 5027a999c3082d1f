# Fine-tune pretrained GPT-2 small (124M) with layer-wise sliding windows (docs/layerwise.md §3) on TinyStories:
#   python data/tinystories/prepare.py && python train.py config/finetune_gpt2_layerwise.py
# The window fields apply on top of the pretrained weights: --schedule=half, --windows=[...] (one per layer),
# --window_pattern=SSSL. Hyper-parameters: lr 5e-5, linear decay, warmup 500, weight decay 0.01, clip 1.0,
# batch 8 x grad-accum 2, context 1024.
variant = "layerwise"
init_from = "gpt2"
schedule = "aggressive"
out_dir = "out-finetune-gpt2-layerwise"
dataset = "tinystories"
eval_interval = 500
eval_iters = 100
log_interval = 50

block_size = 1024
batch_size = 8
gradient_accumulation_steps = 2
dropout = 0.0

learning_rate = 5e-5
lr_schedule = "linear"
warmup_iters = 500
max_iters = 20000
lr_decay_iters = 20000
min_lr = 0.0
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0
compile = True
