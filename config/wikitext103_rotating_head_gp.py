# Rotating-head GPT-2 medium, fixed geometric-progression frequencies per head (docs/gpt2_variants.md §4; their ppl 24.50).
# python train.py config/wikitext103_rotating_head_gp.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "rotating_head"
out_dir = "out-wikitext103-rotating-head-gp"
rotatinghead = "gp"
rope_freq_norm = False
