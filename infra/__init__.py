"""Infrastructure under the model and the entry points: checkpoints (checkpoint), process and device set-up (runtime),
DDP/FSDP2 and sharded checkpoints (scaling), activation checkpointing and the memory planner (memory), analytic FLOPs
(flops), the Hugging Face weight mapping (hf_import) and the config-file / --key=value surface (configurator)."""
