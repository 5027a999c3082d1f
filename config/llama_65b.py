# LLaMA-65B shape (Touvron et al. 2023, table 2): d=8192, 64 heads, 80 layers, lr 1.5e-4, trained on 1.4T tokens.
# Shape preset only, the 33B recipe at another size: python train.py config/train_wikitext103.py config/llama_65b.py
base = "llama_33b.py"
n_embd = 8192
n_head = 64
n_layer = 80
