# LLaMA-33B shape (Touvron et al. 2023, table 2): d=6656, 52 heads, 60 layers, lr 1.5e-4, trained on 1.4T tokens.
# Shape preset only, the 7B recipe at another size and lr: python train.py config/train_wikitext103.py config/llama_33b.py
base = "llama_7b.py"
n_embd = 6656
n_head = 52
n_layer = 60
learning_rate = 1.5e-4
min_lr = 1.4999999999999999e-05  # cosine down to 10 % of the peak
