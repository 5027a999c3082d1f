"""Duo-predict GPT-2 (docs/gpt2_variants.md §3): a plain GPT-2 trained on the N original tokens interleaved with <|MASK|> tokens,

    idx = [t0, M, t1, M, t2, ..., M, t_{N-1}]        (length L = 2N-1; t_k at 2k, the mask after t_k at 2k+1)

so that one forward pass trains two streams: every original predicts the next token (a plain causal LM over the
originals, which never see a mask), and every mask predicts the token it stands in for from both sides. The layout,
the positions (t_k and its mask share wpe[k]), the two losses and the metrics are objectives.InterleavedLM; the
attention pattern is objectives.DuoMask (§1.3.3, duo_mask_variant):
    code (default): t_k sees t_0..t_k; the mask after t_k sees t_0..t_{k-1}, itself and t_{k+1} (never t_k).
    readme: the 8x8 matrix printed in the duo README. It lets t_k see the next mask, which sees t_{k+1}: from two
            layers on the next-token target leaks, so it reproduces that matrix and is not for training.
Without the interleaved layout (generate, eval.py) the model is an ordinary causal LM with the baseline's KV cache.

Fast path (this file): reordered as [originals; masks], the code pattern is block structured: originals -> originals
causal, originals -> masks nothing, masks -> originals causal with the diagonal shifted (keys j < k) plus the one key
k+1, masks -> masks the diagonal. So originals take one causal SDPA call (no mask tensor), and masks take SDPA per
block of duo_block queries over only the originals they can reach plus their own block's masks: no (2N-1)^2 mask is
built, and about 1/4 of the dense score entries are computed. FlexAttention (attn_impl="flex", or "auto" on CUDA
without dropout) takes the same grouped order as one block mask (GroupedDuoMask), built once per length.
attn_impl="dense" builds the full pattern (the reference).
"""
import warnings
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from attention import AttnMask, auto_attention, dense_attention, sdpa_attention, use_flex
from model import GPT, CausalSelfAttention, GPTConfig
from objectives import DuoMask, InterleavedLM
from variants.registry import register


@dataclass
class DuoPredictConfig(GPTConfig):
    duo_mask_variant: str = "code"  # code (leak-free) | readme (the duo README's printed matrix; leaks the future)
    duo_loss: str = "intended"  # intended | hf_double_shift (the labels after HF's second shift)
    mask_token_id: int = -1  # -1: the last id, vocab_size - 1 (the objective appends it to the data vocabulary)
    duo_block: int = 128  # mask queries per block on the fast path

    def validate(self):
        super().validate()
        if self.duo_mask_variant not in ("code", "readme"):
            raise ValueError(f"duo_mask_variant must be code or readme, got {self.duo_mask_variant!r}")
        if self.duo_loss not in ("intended", "hf_double_shift"):
            raise ValueError(f"duo_loss must be intended or hf_double_shift, got {self.duo_loss!r}")
        if not -1 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"mask_token_id must be in [0, vocab_size={self.vocab_size}) or -1 (last id), "
                             f"got {self.mask_token_id}")
        if self.duo_block < 1:
            raise ValueError(f"duo_block must be >= 1, got {self.duo_block}")


def interleave(even, odd):
    """[e0, o0, e1, o1, ..., e_{N-1}] along dim -2 from even (.., N, d) and odd (.., N-1, d)."""
    pad = torch.zeros_like(even[..., :1, :])
    both = torch.stack((even, torch.cat((odd, pad), dim=-2)), dim=-2)  # (.., N, 2, d)
    return both.flatten(-3, -2)[..., :-1, :]


def duo_code_attention(q, k, v, dropout_p=0.0, block=128):
    """The code pattern over an interleaved (B, H, 2N-1, hd) sequence without the dense mask (see module doc)."""
    L = q.size(-2)
    N = (L + 1) // 2
    qo, ko, vo = q[..., 0::2, :], k[..., 0::2, :], v[..., 0::2, :]
    qm, km, vm = q[..., 1::2, :], k[..., 1::2, :], v[..., 1::2, :]
    y_orig = F.scaled_dot_product_attention(qo, ko, vo, dropout_p=dropout_p, is_causal=True)
    y_mask = []
    for s in range(0, N - 1, block):
        e = min(s + block, N - 1)
        # masks k in [s, e) reach originals 0..k+1 <= e, and among masks only themselves
        keys, vals = torch.cat((ko[..., :e + 1, :], km[..., s:e, :]), -2), torch.cat((vo[..., :e + 1, :], vm[..., s:e, :]), -2)
        kk = torch.arange(s, e, device=q.device)[:, None]
        j = torch.arange(e + 1, device=q.device)[None, :]
        c = torch.arange(s, e, device=q.device)[None, :]
        allowed = torch.cat(((j < kk) | (j == kk + 1), c == kk), dim=1)  # (e-s, e+1 + e-s)
        y_mask.append(F.scaled_dot_product_attention(qm[..., s:e, :], keys, vals, attn_mask=allowed,
                                                     dropout_p=dropout_p))
    return interleave(y_orig, torch.cat(y_mask, dim=-2) if y_mask else qm)


def grouped_duo_rule(q, kv, n):
    """The code pattern on the grouped order [t_0..t_{n-1}; masks after t_0..t_{n-2}] (mask m at n + m): originals
    see originals causally; mask m sees originals j < m and j = m + 1, and itself."""
    mask_q, mask_kv = q >= n, kv >= n
    m = q - n
    return ((~mask_q & ~mask_kv & (kv <= q)) | (mask_q & ~mask_kv & ((kv < m) | (kv == m + 1)))
            | (mask_q & mask_kv & (kv == q)))


@dataclass
class GroupedDuoMask(AttnMask):
    """The code pattern with the originals grouped before the masks. Interleaved, the pattern touches every tile
    below the diagonal and more; grouped, a FlexAttention block mask computes 87 of 256 tiles at N = 1024 (151
    interleaved), tending to 1/4 as N grows."""
    originals: int = 0
    causal: bool = False

    def dense_allowed(self, Tq, Tk, device):
        return grouped_duo_rule(torch.arange(Tq, device=device)[:, None], torch.arange(Tk, device=device)[None, :],
                                self.originals)

    def mask_mod(self, Tq, Tk, device):
        n = torch.full((), self.originals, device=device)
        return lambda b, h, q, kv: grouped_duo_rule(q, kv, n)


def group_streams(t):
    """(.., 2N-1, d) interleaved -> originals then masks."""
    return torch.cat((t[..., 0::2, :], t[..., 1::2, :]), dim=-2)


class DuoAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.block = config.duo_block

    def attend(self, q, k, v, mask):
        """The interleaved code pattern: through the block-structured SDPA path, or, where the kernel takes Flex
        (attn_impl="flex", or auto on CUDA without dropout), grouped so that its block mask skips most tiles.
        Everything else as the baseline."""
        if not (isinstance(mask, DuoMask) and mask.variant == "code") or self.kernel is dense_attention:
            return super().attend(q, k, v, mask)
        mask.check(q.size(-2), k.size(-2))
        dropout_p = self.dropout if self.training else 0.0
        grouped = GroupedDuoMask(originals=(q.size(-2) + 1) // 2)
        if self.kernel is sdpa_attention or (self.kernel is auto_attention and not use_flex(q, grouped, dropout_p)):
            return duo_code_attention(q, k, v, dropout_p, self.block)
        y = self.kernel(group_streams(q), group_streams(k), group_streams(v), grouped, dropout_p=dropout_p)
        return interleave(y[..., :grouped.originals, :], y[..., grouped.originals:, :])


@register("duo_predict", objective=InterleavedLM())
class DuoPredictGPT(GPT):
    config_class = DuoPredictConfig
    Attention = DuoAttention

    def __init__(self, config):
        super().__init__(config)
        if config.duo_mask_variant == "readme":
            warnings.warn("duo_mask_variant='readme' lets each original see the next mask, which sees the next "
                          "original: next-token targets leak from two layers on. Use it to reproduce that matrix only.")
