# Diffusion-only GPT-2 medium (docs/gpt2_variants.md §1; diffusion-gpt2-medium-wikitext, their ppl 31.69).
# python train.py config/wikitext103_drift_diffusion_diffusion_only.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "drift_diffusion"
out_dir = "out-wikitext103-diffusion"
apply_drift = False
apply_diffusion = True
baseline_each_head = False
