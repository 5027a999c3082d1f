# Drift + diffusion GPT-2 medium (docs/gpt2_variants.md §1; hub dd-gpt2-medium-wikitext, their ppl 29.00).
# python train.py config/wikitext103_drift_diffusion.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "drift_diffusion"
out_dir = "out-wikitext103-drift-diffusion"
apply_drift = True
apply_diffusion = True
baseline_each_head = True
