# Layer-wise windows (docs/layerwise.md), schedule "full", trained from scratch on TinyStories on a CPU: 12 layers so the
# schedule is exactly the 12-layer table of docs/layerwise.md §1, tiny width so a run takes minutes (1 thread). Prepare the data with
# python data/tinystories/prepare.py --train ../shared/data/tinystories/train_first1000/tiny_stories.txt \
#   --val ../shared/data/tinystories/validation_prefix/tinystories_val.txt --out_dir /tmp/ts
# then: OMP_NUM_THREADS=1 python train.py config/tinystories_layerwise_full_cpu.py --data_dir=/tmp/ts
variant = "layerwise"
schedule = "full"
out_dir = "out-tinystories-layerwise-full"
dataset = "tinystories"
eval_interval = 50
eval_iters = 8
log_interval = 10

batch_size = 4
block_size = 256
n_layer = 12
n_head = 4
n_embd = 64
dropout = 0.0
bias = False

learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 5
max_iters = 50
lr_decay_iters = 50
weight_decay = 0.1
compile = False
device = "cpu"
