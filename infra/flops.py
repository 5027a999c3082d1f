"""FLOP accounting for every model, in one place, and its check against torch's FlopCounterMode.

Analytic forward FLOPs: every linear map (F.linear, which nn.Linear calls) costs 2 * in * out per row it processes;
every attention call costs
attention_flops(T, pairs) = 4 * head_dim * heads per (query, key) pair (QK^T and AV), where pairs are the ones the
layer attends (attended_entries: windows and spans attend fewer than the causal T(T+1)/2, encoders all T^2), or the
pairs a batch-level layout allows (duo's interleaving), or every pair on the dense reference path; DeBERTa's
attention_flops adds its relative-position terms. How often each Linear and attention module runs (ALBERT's shared
layer n_layer times, DeBERTa's mask decoder twice, a [CLS] pooler on one row per sequence, an MLM head on the masked
rows only) is read off one forward pass, so no model has to declare it.
"""
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from attention import combine
from model import CausalSelfAttention


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, CausalSelfAttention)]


class LinearCounter(TorchFunctionMode):
    """Adds 2 * in * out FLOPs per row of every F.linear call made inside it."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            inp, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            self.flops += 2 * weight.numel() * (inp.numel() // weight.size(-1))
        return func(*args, **kwargs)


def count(model, run, tokens, dense=False):
    """Analytic FLOPs per token of the forward pass run() makes over `tokens` input tokens:
    {'matmul', 'attention', 'total'}. dense=True counts every (query, key) pair, as the dense reference computes."""
    totals = {"matmul": 0.0, "attention": 0.0}
    def on_attention(module, args, kwargs, output):
        x = args[0]
        given = args[3] if len(args) > 3 else kwargs.get("mask")
        T = x.size(1)
        if dense:
            pairs = T * T
        elif given is not None:  # with the layout's pattern (documents, duo): the pairs both allow, per sequence
            keep = combine(module.mask(T, T, 0), given).dense_allowed(T, T, x.device)
            pairs = T * T if keep is None else keep.sum().item() / (keep.size(0) if keep.dim() == 4 else 1)
        else:
            pairs = module.attended_entries(T)
        totals["attention"] += x.size(0) * module.attention_flops(T, pairs)

    handles = [m.register_forward_hook(on_attention, with_kwargs=True) for m in attention_modules(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), LinearCounter() as linears:
            run()
        totals["matmul"] = linears.flops
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = {k: v / tokens for k, v in totals.items()}
    out["total"] = out["matmul"] + out["attention"]
    return out


def flops_per_token(model, T):
    """Analytic forward FLOPs per token of one plain length-T sequence (batch 1)."""
    idx = torch.zeros(1, T, dtype=torch.long, device=next(model.parameters()).device)
    return count(model, lambda: model(idx), T)


def training_step_flops(model, objective, batch, micro_steps=1):
    """FLOPs of one optimizer step of one rank: forward and backward (twice the forward) of its micro-batches, each
    like `batch` (the objective's own layout: duo's interleaving, MLM masking, documents)."""
    return 3 * micro_steps * count(model, lambda: objective.logits(model, batch), 1)["total"]


def layer_flops_per_token(attn, T):
    """One attention layer with its projections, per token of a length-T sequence."""
    linears = sum(2 * m.weight.numel() for m in attn.modules() if isinstance(m, nn.Linear))
    return linears + attn.attention_flops(T) / T


def peak_flops(device, dtype, reps=3, budget_s=2.0):
    """FLOP/s of a square matmul on this device and dtype (median of reps after a warm-up run): one reading of MFU's
    denominator (train.py reads it once at start, bench.py between its timing rounds). The matrix grows from 256 to
    the size that saturates the device (2048 on CPU, 8192 on CUDA) only while the next size's runs fit in budget_s,
    so a dtype without fast kernels costs a second or two, not minutes."""
    def timed_matmul(a, b):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    n, n_max = 256, 8192 if device.type == "cuda" else 2048
    while True:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        timed_matmul(a, b)  # warm-up
        once = timed_matmul(a, b)
        if n >= n_max or 8 * once * (reps + 2) > budget_s:  # doubling n costs 8x
            break
        n *= 2
    return 2 * n ** 3 / statistics.median(timed_matmul(a, b) for _ in range(reps))


def counter_check(model, run, tokens):
    """(FlopCounterMode's FLOPs per token, the analytic dense count) of run() on a model built with attn_impl="dense":
    torch counts every matmul there (it does not count the fused CPU SDPA kernels), so the two must agree."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / tokens, count(model, run, tokens, dense=True)["total"]
