# bench entry: adaptive span with every head's span starting at z = 32 (softness R = 32, so keys up to distance
# 32 + 32 are attended; the reach is rounded up to 16 keys; the fast path works in 64-query blocks).
# python bench.py --variants=gpt,config/bench/adaptive_span32.py,config/bench/adaptive_span128.py,config/bench/adaptive_span512.py --component=attention --block_size=1024 --seq_lens=1024
variant = "adaptive_span"
use_adaptive_attention = True
span_init = 32.0
span_block = 64
block_pos_emb = False  # the bench compares attention; the extra per-block positions are an embedding add
