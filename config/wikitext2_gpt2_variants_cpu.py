# Small GPT-2 baseline twin for the docs/gpt2_variants.md variants (drift_diffusion, parallel, duo_predict, rotating_head) on
# WikiText-2 raw, GPT-2 BPE: trains on wiki.valid, evaluates on wiki.test. Prepare once:
#   python data/wikitext103/prepare.py --train <wikitext-2-raw>/wiki.valid.raw --val <wikitext-2-raw>/wiki.test.raw \
#       --out_dir /tmp/wt2
# OMP_NUM_THREADS=1 python train.py config/wikitext2_gpt2_variants_cpu.py     (results/gpt2_variants/run.sh runs all)
# Sized for ~4 minutes of one CPU thread: the 50k-token LM head dominates the cost at this width.
variant = "gpt"
out_dir = "out-wikitext2-gpt2-variants-gpt-cpu"
dataset = "wikitext2"
data_dir = "/tmp/wt2"
device = "cpu"
compile = False
eval_interval = 150
eval_iters = 12
log_interval = 10
always_save_checkpoint = False

batch_size = 4
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = True

learning_rate = 2e-3
max_iters = 150
lr_decay_iters = 150
warmup_iters = 15
min_lr = 2e-4
beta2 = 0.99
weight_decay = 0.01
lr_schedule = "linear"
seed = 1337
