# Layer-wise windows (docs/layerwise.md), schedule "quarter": config/tinystories_layerwise_full_cpu.py with another schedule.
# OMP_NUM_THREADS=1 python train.py config/tinystories_layerwise_quarter_cpu.py --data_dir=/tmp/ts
base = "tinystories_layerwise_full_cpu.py"
schedule = "quarter"
out_dir = "out-tinystories-layerwise-quarter"
