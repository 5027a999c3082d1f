# bench entry: adaptive span at z = 128 plus the periodic (triangle-wave) mask. The periodic zeros lower the analytic
# FLOPs but not the executed ones: the blocked kernel computes whole blocks of keys within the span's reach.
variant = "adaptive_span"
use_adaptive_attention = True
use_triangle_wave_masking = True
span_init = 128.0
span_block = 64
block_pos_emb = False
