# Small CPU twin of config/enwik8_cpu_span_periodic.py: plain causal attention, same extra per-block position embeddings.
# OMP_NUM_THREADS=1 python train.py config/enwik8_cpu_baseline.py --data_dir=/tmp/enwik8_wt2
base = "enwik8_cpu_span_periodic.py"
out_dir = "out-enwik8-cpu-baseline"
use_adaptive_attention = False
use_triangle_wave_masking = False
