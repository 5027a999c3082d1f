# Duo-predict GPT-2 medium (docs/gpt2_variants.md §3): 512 original tokens per sequence, trained interleaved with <|MASK|>
# (2 x 512 - 1 = 1023 positions), wpe of 512 rows; 64 sequences per step, 5 epochs. Their run stopped early and
# trained the double-shifted objective (duo_loss='hf_double_shift'); its ppl 13.46 is not a next-token perplexity.
# python train.py config/wikitext103_duo_predict.py
base = "train_wikitext103.py"  # GPT-2 medium recipe of docs/gpt2_variants.md §0
variant = "duo_predict"
out_dir = "out-wikitext103-duo-predict"
block_size = 512
duo_mask_variant = "code"
duo_loss = "intended"
max_iters = 17800  # 5 epochs of 116.7M tokens at 64 x 512 original tokens per step
lr_decay_iters = 17800
warmup_iters = 1780
