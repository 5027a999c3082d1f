# Small CPU twin of config/enwik8_cpu_span_periodic.py: adaptive span without the periodic mask.
# OMP_NUM_THREADS=1 python train.py config/enwik8_cpu_span_only.py --data_dir=/tmp/enwik8_wt2
base = "enwik8_cpu_span_periodic.py"
out_dir = "out-enwik8-cpu-span-only"
use_triangle_wave_masking = False
