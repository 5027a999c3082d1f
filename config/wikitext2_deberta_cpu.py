# Small DeBERTa v1 (disentangled c2c+c2p+p2c, k=32, Enhanced Mask Decoder, MLM only) on WikiText-2 raw; same
# schedule as config/wikitext2_bert_cpu.py. OMP_NUM_THREADS=1 python train.py config/wikitext2_deberta_cpu.py
base = "wikitext2_bert_cpu.py"
variant = "deberta"
out_dir = "out-wikitext2-deberta"
max_relative_positions = 32
