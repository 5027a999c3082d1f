# ALiBi (variants/alibi.py) on tiny Shakespeare, CPU: the train_shakespeare_char_cpu.py recipe with linear attention
# biases in place of learned position embeddings.
# python data/shakespeare_char/prepare.py --source input.txt && python train.py config/shakespeare_char_alibi.py
base = "train_shakespeare_char_cpu.py"
out_dir = "out-shakespeare-char-alibi"
variant = "alibi"
