# Rotating-head GPT-2 medium, learned per-head rotary frequencies (docs/gpt2_variants.md §4; rotating-head-lr, their ppl 24.64).
# python train.py config/wikitext103_rotating_head.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "rotating_head"
out_dir = "out-wikitext103-rotating-head-lr"
rotatinghead = "lr"
rope_freq_norm = False
