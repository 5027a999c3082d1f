"""Duo-predict GPT-2 (SPEC §1.3): train on the N original tokens interleaved with <|MASK|> tokens,

    idx = [t0, M, t1, M, t2, ..., M, t_{N-1}]        (length L = 2N-1; t_k at 2k, the mask after t_k at 2k+1)

so that one forward pass trains two streams: every original predicts the next token (a plain causal LM over the
originals, which never see a mask), and every mask predicts the token it stands in for from both sides.

Positions (§1.3.2): t_k and the mask after it share wpe[k], so wpe has block_size = N rows.
Attention (§1.3.3), duo_mask_variant:
    code (default): t_k sees t_0..t_k; the mask after t_k sees t_0..t_{k-1}, itself and t_{k+1} (never t_k).
    readme: the 8x8 matrix printed in the seed README. It lets t_k see the next mask, which sees t_{k+1}: from two
            layers on the next-token target leaks, so it is here to reproduce the seed, not to train with.
Loss (§1.3.4), duo_loss:
    intended (default): original 2k -> t_{k+1}, mask 2k+1 -> t_k, one mean over both streams. The last original is
            scored against the true next token (the sampler provides it; the original code had none and skipped it).
    hf_double_shift: what the original code trained, because HF shifted its already-shifted labels again:
            original 2k -> t_k (a copy), mask 2k+1 -> t_{k+2}; the last original and the last mask unscored.
Evaluation reports next-token loss/accuracy from the ORIGINAL positions only (comparable with a plain GPT at block
size N) plus the mask stream's loss. Without interleaved=True the model is an ordinary causal LM (plain mode):
generate() and its KV cache work as for the baseline.

Fast path: reordered as [originals; masks], the code pattern is block structured: originals -> originals causal,
originals -> masks nothing, masks -> originals causal with the diagonal shifted (keys j < k) plus the one key k+1,
masks -> masks the diagonal. So originals take one causal SDPA call (no mask tensor), and masks take SDPA per block of
duo_block queries over only the originals they can reach plus their own block's masks: no (2N-1)^2 mask is built,
and about 1/4 of the dense score entries are computed. attn_impl="dense" builds the full pattern (the reference).
"""
import warnings
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model import GPT, AttnMask, CausalSelfAttention, GPTConfig, register, sdpa_attention


@dataclass
class DuoPredictConfig(GPTConfig):
    duo_mask_variant: str = "code"  # code (leak-free) | readme (the seed's printed matrix; leaks the future)
    duo_loss: str = "intended"  # intended | hf_double_shift (the original code's objective)
    mask_token_id: int = -1  # -1: the last id, vocab_size - 1 (model_vocab_size appends it to the data vocabulary)
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


def duo_allowed(L, variant="code", device=None):
    """(L, L) bool: may query a attend key b, in the interleaved layout (0-based; originals at even indices)."""
    a = torch.arange(L, device=device)[:, None]
    b = torch.arange(L, device=device)[None, :]
    a_orig, b_orig = a % 2 == 0, b % 2 == 0
    if variant == "code":
        orig_rows = a_orig & b_orig & (b <= a)
        mask_rows = ~a_orig & ((b_orig & (b <= a - 3)) | (b == a) | (b == a + 1))
    elif variant == "readme":  # the seed's 1-based rules (i odd: j <= i+1; i even: odd j < i, i, i+1) in 0-based
        orig_rows = a_orig & (b <= a + 1)
        mask_rows = ~a_orig & ((b_orig & (b < a)) | (b == a) | (b == a + 1))
    else:
        raise ValueError(f"unknown duo mask variant {variant!r}")
    return orig_rows | mask_rows


@dataclass
class DuoMask(AttnMask):
    """The interleaved duo pattern. The dense reference materialises it; DuoAttention's fast path never does."""
    variant: str = "code"
    causal: bool = False

    def dense_allowed(self, Tq, Tk, device):
        if Tq != Tk or self.q_offset:
            raise ValueError("the duo pattern is defined for a whole interleaved sequence (no KV cache)")
        return duo_allowed(Tq, self.variant, device)


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


class DuoAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.block = config.duo_block

    # `kernel` stays assignable (bench.py swaps sdpa/dense on every attention module): the assigned kernel serves
    # plain mode, and choosing sdpa also selects the block-structured path for the interleaved code pattern.
    @property
    def kernel(self):
        return self.duo_kernel

    @kernel.setter
    def kernel(self, fn):
        self.plain_kernel = fn

    def duo_kernel(self, q, k, v, mask, dropout_p=0.0):
        if isinstance(mask, DuoMask) and mask.variant == "code" and self.plain_kernel is sdpa_attention:
            return duo_code_attention(q, k, v, dropout_p, self.block)
        return self.plain_kernel(q, k, v, mask, dropout_p=dropout_p)  # plain mode, readme pattern, dense reference


@register("duo_predict")
class DuoPredictGPT(GPT):
    config_class = DuoPredictConfig

    def __init__(self, config):
        super().__init__(config)
        self.mask_id = config.mask_token_id if config.mask_token_id >= 0 else config.vocab_size - 1
        if config.duo_mask_variant == "readme":
            warnings.warn("duo_mask_variant='readme' lets each original see the next mask, which sees the next "
                          "original: next-token targets leak from two layers on. Use it to reproduce the seed only.")

    @classmethod
    def model_vocab_size(cls, data_vocab_size):
        return data_vocab_size + 1  # <|MASK|> = data_vocab_size (50257 for GPT-2 BPE), not padded so it is the last id

    def make_attention(self, layer_idx):
        return DuoAttention(self.config, layer_idx)

    # layout ---------------------------------------------------------------------------------------------------
    def interleave_tokens(self, x):
        """(B, N) originals -> (B, 2N-1) [t0, M, t1, M, ..., t_{N-1}]."""
        B, N = x.shape
        idx = torch.full((B, 2 * N - 1), self.mask_id, dtype=x.dtype, device=x.device)
        idx[:, 0::2] = x
        return idx

    def prepare_batch(self, x, y, generator=None):
        B, N = x.shape
        idx = self.interleave_tokens(x)
        targets = torch.full_like(idx, -1)
        if self.config.duo_loss == "intended":
            targets[:, 0::2] = y  # original t_k -> t_{k+1}
            targets[:, 1::2] = x[:, :-1]  # mask after t_k -> t_k
        else:  # hf_double_shift: the labels the original code ended up with after HF's second shift
            targets[:, 0:-1:2] = x[:, :-1]  # original t_k -> t_k (the last original unscored)
            targets[:, 1:-2:2] = x[:, 2:]  # mask after t_k -> t_{k+2} (the last mask unscored)
        return {"idx": idx, "targets": targets, "interleaved": True, "next_tokens": y}

    def positions(self, idx, pos_offset=0, interleaved=False, **batch):
        if not interleaved:
            return super().positions(idx, pos_offset)
        L = idx.size(1)
        if L % 2 == 0 or pos_offset:
            raise ValueError(f"an interleaved duo sequence has odd length 2N-1 and no offset, got length {L}, "
                             f"offset {pos_offset}")
        if (L + 1) // 2 > self.config.block_size:
            raise ValueError(f"{(L + 1) // 2} original tokens but block_size is {self.config.block_size}")
        return torch.arange(L, device=idx.device) // 2  # t_k and the mask after it share position k

    def run_blocks(self, x, pos, caches=None, interleaved=False, **batch):
        if not interleaved:
            return super().run_blocks(x, pos, caches)
        if caches is not None:
            raise ValueError("interleaved duo sequences are processed whole; KV caches are for plain mode")
        mask = DuoMask(variant=self.config.duo_mask_variant)  # one description shared by every layer
        for block in self.transformer.h:
            x = block(x, pos, None, mask)
        return x

    # metrics --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_metrics(self, logits, targets, interleaved=False, next_tokens=None, **batch):
        if not interleaved:
            return super().eval_metrics(logits, targets)
        out = super().eval_metrics(logits[:, 0::2], next_tokens)  # next-token metrics at original positions only
        mask_targets = targets[:, 1::2].reshape(-1)
        n = (mask_targets != -1).sum()
        ce = F.cross_entropy(logits[:, 1::2].reshape(-1, logits.size(-1)).float(), mask_targets, ignore_index=-1,
                             reduction="sum")
        out["mask_loss"] = (ce, n)
        return out

    # fill-in ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fill_mask(self, segments, top_k=5):
        """Predict the token hidden in each gap between segments from the mask that stands in for it: that mask sees
        the tokens before the gap and the token right after it. The hidden original slot holds <|MASK|>."""
        originals, holes = [], []
        for i, seg in enumerate(segments):
            originals.extend(seg)
            if i < len(segments) - 1:
                holes.append(len(originals))
                originals.append(self.mask_id)
        if any(h + 1 >= len(originals) for h in holes):
            raise ValueError("duo-predict fills a gap from the token after it: put some text after the last mask")
        if len(originals) > self.config.block_size:
            raise ValueError(f"{len(originals)} tokens but the model's context is {self.config.block_size}")
        device = self.lm_head.weight.device
        idx = self.interleave_tokens(torch.tensor([originals], device=device))
        logits, _ = self(idx, interleaved=True)
        out = []
        for h in holes:
            scores = logits[0, 2 * h + 1].float()
            scores[self.mask_id] = float("-inf")  # the answer is a real token
            probs = torch.softmax(scores, -1)
            top = torch.topk(probs, min(top_k, probs.numel()))
            out.append(list(zip(top.indices.tolist(), top.values.tolist())))
        return out
