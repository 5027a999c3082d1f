"""Attention masks, kernels and KV caches shared by every model.

A mask is described (AttnMask), not materialised, so fast paths can skip the work it rules out:
    dense_attention   the readable O(T^2) reference (also returns the attention weights)
    sdpa_attention    fused SDPA: flash causal, the banded kernel for reach-limited masks, else an explicit mask
    banded_attention  causal attention of limited reach in O(T * (block + reach)), one fused call
KVCache keeps every key of a layer for decoding; RollingKVCache only the last few a window or span can reach.
"""
import math
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F


@dataclass
class AttnMask:
    """Which (query, key) pairs may interact, plus optional additive score biases.

    Query i (0-based within the call) sits at absolute position q_offset + i; key j at absolute position j; their
    distance is d = q_offset + i - j.
    causal:        only d >= 0.
    window:        only d < window (sliding windows).
    distance_bias: (H, D) additive bias by distance, d in [0, D); implies window D. Learned log-masks such as adaptive
                   span and periodic masking are functions of distance, so blocked kernels can slice them for free.
    bias:          an additive float term broadcastable to (B, H, Tq, Tk), may require grad (padding, DeBERTa).
    segments:      (B, T) document index of every position of a whole sequence: only pairs within one document
                   (packed text with doc_mask).
    block:         query block of the banded fast path (0: chosen from the reach by band_block).
    A layout with a pattern of its own (duo's interleaving) subclasses this and overrides dense_allowed.
    """
    causal: bool = True
    window: int | None = None
    q_offset: int = 0
    distance_bias: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    block: int = 0

    def is_plain_causal(self):
        return (self.causal and self.window is None and self.distance_bias is None and self.bias is None
                and self.segments is None)

    def reach(self):
        """Largest distance that can be attended (+1), or None if unlimited."""
        limits = [w for w in (self.window, None if self.distance_bias is None else self.distance_bias.size(-1))
                  if w is not None]
        return min(limits) if limits else None

    def distances(self, Tq, Tk, device):
        return (torch.arange(Tq, device=device)[:, None] + self.q_offset) - torch.arange(Tk, device=device)[None, :]

    def dense_allowed(self, Tq, Tk, device):
        """The (Tq, Tk) bool matrix of allowed pairs, (B, 1, Tq, Tk) with segments (or None if all are allowed)."""
        reach = self.reach()
        keep = None
        if self.causal or reach is not None:
            dist = self.distances(Tq, Tk, device)
            keep = dist >= 0 if self.causal else torch.ones_like(dist, dtype=torch.bool)
            keep = keep if reach is None else keep & (dist < reach)
        if self.segments is not None:
            if Tq != Tk or self.q_offset:
                raise ValueError("a document mask covers one whole sequence (no KV cache)")
            same = (self.segments[:, :, None] == self.segments[:, None, :])[:, None]  # (B, 1, T, T)
            keep = same if keep is None else keep & same
        return keep

    def dense_bias(self, Tq, Tk, device):
        """The additive (.., Tq, Tk) score bias (or None): bias plus distance_bias gathered at each pair's distance."""
        total = self.bias
        if self.distance_bias is not None:
            D = self.distance_bias.size(-1)
            dist = self.distances(Tq, Tk, device).clamp(0, D - 1)
            by_distance = self.distance_bias[:, dist]  # (H, Tq, Tk); out-of-range pairs are disallowed anyway
            total = by_distance if total is None else total + by_distance
        return total


def combine(own, given):
    """A layer's own mask with the pattern of the input's layout: a layout with a pattern of its own (an AttnMask
    subclass, e.g. duo's) replaces the layer's; otherwise the layer keeps its mask and takes the layout's
    document segments and additive bias (padding)."""
    if given is None:
        return own
    if type(given) is not AttnMask:
        return given
    bias = given.bias if own.bias is None or given.bias is None else own.bias + given.bias
    return replace(own, segments=given.segments, bias=own.bias if given.bias is None else bias)


def dense_attention(q, k, v, mask: AttnMask, dropout_p=0.0, scale=None, return_weights=False):
    """Reference attention: explicit scores -> bias -> mask -> softmax -> dropout -> @v. Readable and O(T^2)."""
    Tq, Tk = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    bias = mask.dense_bias(Tq, Tk, q.device)
    if bias is not None:
        scores = scores + bias
    keep = mask.dense_allowed(Tq, Tk, q.device)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    y = F.dropout(weights, dropout_p) @ v
    return (y, weights) if return_weights else y


def sdpa_attention(q, k, v, mask: AttnMask, dropout_p=0.0, scale=None):
    """Fused scaled-dot-product attention. Plain causal goes to flash-style kernels with no mask tensor; a causal
    mask of limited reach (window, span) over a whole sequence goes to banded_attention, whose cost is
    O(T * (block + reach)) instead of O(T^2); anything else gets an explicit mask."""
    Tq, Tk = q.size(-2), k.size(-2)
    if mask.is_plain_causal() and mask.q_offset == Tk - Tq:
        # is_causal aligns the last query with the last key (top-left alignment is only right for Tq == Tk)
        if Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
        if Tq == 1:  # one new token with a KV cache sees every cached key
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    reach = mask.reach()
    if reach is not None and mask.causal and mask.q_offset == 0 and Tq == Tk and mask.bias is None:
        block = mask.block or band_block(reach)
        if 4 * (block + reach - 1) <= Tk:  # below this the band is most of the triangle: flash causal wins
            return banded_attention(q, k, v, mask, reach, block, dropout_p, scale)
    keep = mask.dense_allowed(Tq, Tk, q.device)
    attn_mask = mask.dense_bias(Tq, Tk, q.device)
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
        if keep is not None:
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))
    elif keep is not None:
        attn_mask = keep
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


def executed_entries(T, reach=None, block=0):
    """(query, key) pairs per head that sdpa_attention computes for one whole causal length-T sequence whose mask
    reaches `reach` keys back (None: plain causal). For honest FLOP reports of masking variants."""
    if reach is None:
        return T * (T + 1) // 2  # flash causal skips the blocks above the diagonal
    b = block or band_block(reach)
    if 4 * (b + reach - 1) <= T:
        return -(-T // b) * b * (b + reach - 1)
    return T * T  # an explicit mask over the full square


def band_block(reach):
    """Query block of the banded kernel: a block of b queries computes b * (b + reach - 1) scores, so small blocks
    waste less, but each block costs fixed overhead. Measured on CPU (T=4096, 12 heads of 64, fwd+bwd)."""
    return min(128, max(32, reach))


def banded_attention(q, k, v, mask, reach, block, dropout_p=0.0, scale=None):
    """Causal attention of reach W over a whole sequence in ONE fused SDPA call. Queries are cut into blocks of b;
    block n attends the b + W - 1 keys ending at its last query, gathered by unfold (a strided view), and the blocks
    become extra batch rows, so the (b, b + W - 1) band mask broadcasts over heads. Within a block, query slot t and
    key slot r are at distance t + W - 1 - r whatever the block, so a per-head distance bias is one (H, b, K) tile;
    then the blocks join the head dimension instead, so that tile broadcasts over the batch."""
    B, H, T, hd = q.shape
    b, W = block, reach
    nb, K = -(-T // b), b + reach - 1
    pad = nb * b - T
    by_head = mask.distance_bias is not None

    def fold(t, size):  # (B, H, nb, size, hd) -> blocks as batch rows, or as heads when the mask differs per head
        return t.reshape(B, H * nb, size, hd) if by_head else t.transpose(1, 2).reshape(B * nb, H, size, hd)

    def gather(t):  # keys of block n: absolute positions n*b - (W-1) ... n*b + b - 1 (left padding never attended)
        return fold(F.pad(t, (0, 0, W - 1, pad)).unfold(2, K, b).transpose(-1, -2), K)

    dist = torch.arange(b, device=q.device)[:, None] + (W - 1) - torch.arange(K, device=q.device)[None, :]
    key_pos = torch.arange(nb, device=q.device)[:, None] * b - (W - 1) + torch.arange(K, device=q.device)
    keep = ((dist >= 0) & (dist < W))[None] & (key_pos >= 0)[:, None, :]  # (nb, b, K)
    if mask.segments is not None:  # and only within a document: (B, nb, b, K)
        seg = F.pad(mask.segments, (0, pad), value=-1)  # padded queries and keys share a segment: no empty rows
        seg_k = F.pad(seg, (W - 1, 0), value=-2).unfold(1, K, b)  # (B, nb, K); left padding matches nothing
        keep = keep[None] & (seg.view(B, nb, b)[..., :, None] == seg_k[..., None, :])
    q_blocks, k_blocks, v_blocks = fold(F.pad(q, (0, 0, 0, pad)).view(B, H, nb, b, hd), b), gather(k), gather(v)
    if by_head:  # a learnable bias: plain matmuls (SDPA's math path would scale k too and add passes)
        tile = mask.distance_bias[:, dist.clamp(0, mask.distance_bias.size(-1) - 1)].to(q.dtype)  # (H, b, K)
        masked = torch.zeros_like(keep, dtype=q.dtype).masked_fill(~keep, float("-inf"))
        if keep.dim() == 3:
            bias = (tile[:, None] + masked).reshape(1, H * nb, b, K)
        else:
            bias = (tile[None, :, None] + masked[:, None]).reshape(B, H * nb, b, K)
        scores = (q_blocks * (hd ** -0.5 if scale is None else scale)) @ k_blocks.transpose(-1, -2)
        probs = torch.softmax(scores + bias, dim=-1)
        probs = F.dropout(probs, dropout_p) if dropout_p else probs
        return (probs @ v_blocks).view(B, H, nb * b, hd)[:, :, :T]
    keep = keep.expand(B, nb, b, K) if keep.dim() == 4 else keep[None].expand(B, nb, b, K)
    y = F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, dropout_p=dropout_p, scale=scale,
                                       attn_mask=keep.reshape(B * nb, 1, b, K))
    return y.view(B, nb, H, b, hd).transpose(1, 2).reshape(B, H, nb * b, hd)[:, :, :T]


KERNELS = {"sdpa": sdpa_attention, "dense": dense_attention}


def share_kv_heads(t, n_head):
    """Grouped-query attention: each consecutive group of n_head / t.size(1) query heads uses one key/value head."""
    return t if t.size(1) == n_head else t.repeat_interleave(n_head // t.size(1), dim=1)


class KVCache:
    """Preallocated keys/values of one attention layer for incremental decoding."""

    def __init__(self, batch, n_head, max_len, head_dim, device, dtype):
        self.k = torch.zeros(batch, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.len = 0

    def append(self, k, v):
        T = k.size(-2)
        if self.len + T > self.k.size(-2):
            raise RuntimeError(f"KV cache overflow: {self.len} + {T} > {self.k.size(-2)}")
        self.k[:, :, self.len:self.len + T] = k
        self.v[:, :, self.len:self.len + T] = v
        self.len += T
        return self.k[:, :, :self.len], self.v[:, :, :self.len]


class RollingKVCache:
    """Keeps only the last `keep` keys/values: all that a layer whose mask reaches at most keep + 1 keys back (a
    window, a span) needs for the next query. `len` is the number retained, so the attention's q_offset counts from
    the first retained key; masks depend only on distances, which stay exact."""

    def __init__(self, keep):
        self.keep, self.k, self.v = keep, None, None

    @property
    def len(self):
        return 0 if self.k is None else self.k.size(-2)

    def append(self, k, v):
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=-2), torch.cat((self.v, v), dim=-2)
        start = max(0, k.size(-2) - self.keep)
        self.k, self.v = k[:, :, start:], v[:, :, start:]
        return k, v
