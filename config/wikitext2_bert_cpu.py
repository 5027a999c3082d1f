# Small BERT (post-LN, MLM 15 % 80/10/10 + NSP) on WikiText-2 raw GPT-2 BPE; trains on wiki.valid, evaluates on
# wiki.test. OMP_NUM_THREADS=1 python train.py config/wikitext2_bert_cpu.py --out_dir=/tmp/out-bert
variant = "bert"
out_dir = "out-wikitext2-bert"
dataset = "wikitext2"  # prepare: python data/wikitext103/prepare.py --train <wikitext-2-raw>/wiki.valid.raw
data_dir = "/tmp/wt2"  #   --val <wikitext-2-raw>/wiki.test.raw --out_dir /tmp/wt2   (see results/foundational/run.sh)
device = "cpu"
compile = False
eval_interval = 200
eval_iters = 40
log_interval = 20
always_save_checkpoint = False

batch_size = 8
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.1

learning_rate = 1e-3
max_iters = 400
lr_decay_iters = 400
warmup_iters = 40
min_lr = 1e-4
beta2 = 0.99
weight_decay = 0.01
