# LLaMA-7B shape (Touvron et al. 2023, table 2): d=4096, 32 heads, 32 layers, lr 3e-4, trained on 1.0T tokens.
# Shape preset only (no data recipe of ours reaches that scale): combine with a dataset config, e.g.
# python train.py config/train_wikitext103.py config/llama_7b.py  (later files override earlier ones)
variant = "llama"
n_embd = 4096
n_head = 32
n_layer = 32
block_size = 2048
vocab_size = 32000  # SentencePiece BPE; on GPT-2 BPE data leave it to the dataset (drop this line)
norm_eps = 1e-6  # the released checkpoints (the paper's ModelArgs default is 1e-5)
dropout = 0.0
learning_rate = 3e-4
min_lr = 2.9999999999999997e-05  # cosine down to 10 % of the peak
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_iters = 2000
