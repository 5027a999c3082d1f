# Baby GPT on tiny Shakespeare characters (nanoGPT's recipe): 6 layers, 6 heads, 384 wide, context 256.
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = False

learning_rate = 1e-3  # small networks can take a larger learning rate
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # a little larger: few tokens per iteration
warmup_iters = 100
compile = True
