# LLaMA-13B shape (Touvron et al. 2023, table 2): d=5120, 40 heads, 40 layers, lr 3e-4, trained on 1.0T tokens.
# Shape preset only, the 7B recipe at another size: python train.py config/train_wikitext103.py config/llama_13b.py
base = "llama_7b.py"
n_embd = 5120
n_head = 40
n_layer = 40
