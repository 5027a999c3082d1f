"""Tools that act on a finished run: eval (held-out loss with overlapping windows), export (to a transformers
directory), analysis (attention entropy and distance per layer) and plot (loss curves). Run them as
`python tools/<name>.py ...` from anywhere."""
