# The baseline GPT-2 block at the shape of config/wikitext2_llama_cpu.py (same schedule), for the LLaMA comparison.
# OMP_NUM_THREADS=1 python train.py config/wikitext2_gpt_cpu.py
variant = "gpt"
out_dir = "out-wikitext2-gpt"
dataset = "wikitext2"  # prepare: python data/wikitext103/prepare.py --train <wikitext-2-raw>/wiki.valid.raw
data_dir = "/tmp/wt2"  #   --val <wikitext-2-raw>/wiki.test.raw --out_dir /tmp/wt2   (see results/foundational/run.sh)
device = "cpu"
compile = False
eval_interval = 125
eval_iters = 30
log_interval = 20
always_save_checkpoint = False

batch_size = 4
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 250
lr_decay_iters = 250
warmup_iters = 25
min_lr = 1e-4
beta2 = 0.95
weight_decay = 0.1
