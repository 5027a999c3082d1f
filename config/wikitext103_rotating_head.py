# Rotating-head GPT-2 medium, learned per-head rotary frequencies (SPEC §1.4; rotating-head-lr, their ppl 24.64).
# python train.py config/wikitext103_rotating_head.py
exec(open("config/train_wikitext103.py").read())  # GPT-2 medium recipe of SPEC §1.0 (run from the repo root)
variant = "rotating_head"
out_dir = "out-wikitext103-rotating-head-lr"
rotatinghead = "lr"
rope_freq_norm = False
