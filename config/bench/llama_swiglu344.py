# bench.py entry: LLaMA with SwiGLU width 344 (~8d/3 at d = 128), the shape of config/wikitext2_llama_cpu.py, so its
# blocks hold as many weights as the baseline GPT's at the same n_layer/n_head/n_embd.
# python bench.py --variants=gpt,config/bench/llama_swiglu344.py --n_layer=4 --n_head=4 --n_embd=128 --block_size=128
variant = "llama"
ffn_hidden = 344
