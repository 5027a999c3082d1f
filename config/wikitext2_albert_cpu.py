# Small ALBERT (E=64 -> H=128, one layer shared 4x, SOP, n-gram MLM n<=3, no dropout) on WikiText-2 raw; same
# schedule as config/wikitext2_bert_cpu.py. OMP_NUM_THREADS=1 python train.py config/wikitext2_albert_cpu.py
base = "wikitext2_bert_cpu.py"
variant = "albert"
out_dir = "out-wikitext2-albert"
embedding_size = 64
dropout = 0.0  # ALBERT removes dropout
