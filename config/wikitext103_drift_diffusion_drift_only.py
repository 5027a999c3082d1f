# Drift-only GPT-2 medium (docs/gpt2_variants.md §1; drift-gpt2-medium-wikitext, their ppl 25.49).
# python train.py config/wikitext103_drift_diffusion_drift_only.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "drift_diffusion"
out_dir = "out-wikitext103-drift"
apply_drift = True
apply_diffusion = False
baseline_each_head = True
