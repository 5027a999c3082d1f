# The char-level GPT config of docs/foundational.md §1's table: context 8, d 384, 6 heads, 6 layers, dropout 0.2, batch 4, on
# tiny Shakespeare (65 chars): config/shakespeare_char_gpt_ctx256.py at that table's context and batch. The optimiser
# settings are the lecture's.
# python data/shakespeare_char/prepare.py --source input.txt && python train.py config/shakespeare_char_gpt_ctx8.py
base = "shakespeare_char_gpt_ctx256.py"
out_dir = "out-shakespeare-char-gpt-ctx8"
block_size = 8
batch_size = 4
