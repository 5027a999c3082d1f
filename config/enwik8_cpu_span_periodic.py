# Small CPU version of config/train_enwik8.py (adaptive span + periodic mask), for byte-level text on 2 cores:
# OMP_NUM_THREADS=1 python train.py config/enwik8_cpu_span_periodic.py --data_dir=/tmp/enwik8_wt2
# Twins at the same iterations: config/enwik8_cpu_baseline.py, config/enwik8_cpu_span_only.py.
out_dir = "out-enwik8-cpu-span-periodic"
dataset = "enwik8"
device = "cpu"
compile = False
eval_interval = 200
eval_iters = 20
log_interval = 20
always_save_checkpoint = False

batch_size = 8
block_size = 256
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 40
max_iters = 400
lr_decay_iters = 400

variant = "adaptive_span"
use_adaptive_attention = True
use_triangle_wave_masking = True
softness_span_mask = 32.0
span_reg = 4e-6
block_pos_emb = True
span_block = 32  # query blocks of 32 (the reach, z + R = 160 at init, is rounded up to 16 keys)
