# Small LLaMA on WikiText-2 raw GPT-2 BPE (train wiki.valid, eval wiki.test), paired with config/wikitext2_gpt_cpu.py:
# same depth/width/heads/schedule; SwiGLU width 344 ~ 8d/3 so the blocks hold as many weights as GPT's 4d GELU MLP
# (the 256-rounding of the big presets would give 512 here). LLaMA's untied head adds vocab x d weights.
# OMP_NUM_THREADS=1 python train.py config/wikitext2_llama_cpu.py
base = "wikitext2_gpt_cpu.py"
variant = "llama"
out_dir = "out-wikitext2-llama"
ffn_hidden = 344
