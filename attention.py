"""Attention masks, kernels and KV caches shared by every model.

A mask is described (AttnMask), not materialised, so fast paths can skip the work it rules out:
    dense_attention   the readable O(T^2) reference (also returns the attention weights)
    sdpa_attention    fused SDPA: flash causal, the banded kernel for reach-limited masks, else an explicit mask;
                      on CUDA, masks SDPA cannot skip work for go to flex_attention instead (see use_flex)
    flex_attention    FlexAttention: the mask's pairs as a block mask (untouched tiles skipped), its biases as a
                      score_mod (gradients reach learnable ones); compiled on CUDA, a forward-only reference on CPU
    banded_attention  causal attention of limited reach in O(T * (block + reach)), one fused call
KVCache keeps every key of a layer for decoding; RollingKVCache only the last few a window or span can reach.
"""
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

import torch
from torch.nn import functional as F
from torch.nn.attention.flex_attention import and_masks, create_block_mask
from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention


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
                   Entries at or below half the dtype's lowest value (or -inf) exclude their pair: softmax gives them
                   exactly 0 either way, and FlexAttention's block mask skips keys a bias of shape (B, 1, 1, Tk)
                   excludes (padding).
    segments:      (B, T) document index of every position of a whole sequence: only pairs within one document
                   (packed text with doc_mask).
    block:         query block of the banded fast path (0: chosen from the reach by band_block).
    A layout with a pattern of its own (duo's interleaving) subclasses this and overrides dense_allowed, and
    mask_mod for FlexAttention (otherwise Flex reads the dense pattern from a table).
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

    def mask_mod(self, Tq, Tk, device):
        """FlexAttention's mask_mod(b, h, q_idx, kv_idx) -> bool of the pairs dense_allowed keeps (None: all). Causal
        and reach are one rule whose bounds are tensors, so that one compiled kernel serves every offset, window and
        reach (no recompilation per layer)."""
        if type(self).dense_allowed is not AttnMask.dense_allowed:  # a pattern known only densely: read its table
            keep = self.dense_allowed(Tq, Tk, device)
            keep = None if keep is None else as_4d(keep)
            return None if keep is None else lambda b, h, q, kv: pick(keep, b, h, q, kv)
        reach, seg = self.reach(), self.segments
        if seg is not None and (Tq != Tk or self.q_offset):
            raise ValueError("a document mask covers one whole sequence (no KV cache)")
        if not self.causal and reach is None and seg is None:
            return None
        # distances d = q + off - kv lie in [off - Tk + 1, off + Tq - 1]: bounds outside that range rule nothing out
        off, lo, hi = (torch.full((), n, device=device) for n in (
            self.q_offset, 0 if self.causal else self.q_offset - Tk, self.q_offset + Tq if reach is None else reach))
        within = lambda b, h, q, kv: (q + off - kv >= lo) & (q + off - kv < hi)
        if seg is None:
            return within
        return and_masks(within, lambda b, h, q, kv: seg[b, q] == seg[b, kv])

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


def auto_attention(q, k, v, mask: AttnMask, dropout_p=0.0, scale=None):
    """The default kernel (attn_impl="auto"): the fastest exact one for each call. On CUDA the masks use_flex names go
    to flex_attention, which skips the tiles they never reach; everything else, and everything on CPU, to
    sdpa_attention."""
    if use_flex(q, mask, dropout_p):
        return flex_attention(q, k, v, mask, scale=scale)
    return sdpa_attention(q, k, v, mask, dropout_p, scale)


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


# FlexAttention ------------------------------------------------------------------------------------------------------
FLEX_NO_CPU_BACKWARD = "attn_impl='flex' has no backward on CPU (torch FlexAttention); train with --attn_impl=auto"
FLEX_NO_DROPOUT = ("attn_impl='flex' has no attention dropout (torch FlexAttention); train with --dropout=0 or "
                   "--attn_impl=auto")
BLOCK_MASK_CACHE = 64  # tensor-free patterns kept (a model has a few: one per window or reach, and per length)
_block_masks = OrderedDict()  # (pattern, lengths, device) -> BlockMask, least recently used dropped first
_FLEX = {"kernel": None, "tensors": None}  # the compiled CUDA kernel; (tensors, versions, {pattern: BlockMask})


def check_trainable(attn_impl, device, dropout=0.0):
    """Raise ValueError with one line when a model using attn_impl cannot be trained on device (a torch.device or
    a resolved name such as "cpu", "cuda:1"): FlexAttention has no backward on CPU and no attention dropout."""
    if attn_impl != "flex":
        return
    if torch.device(device).type == "cpu":
        raise ValueError(FLEX_NO_CPU_BACKWARD)
    if dropout:
        raise ValueError(FLEX_NO_DROPOUT)


def as_4d(t):
    """t (broadcastable to (B, H, Tq, Tk)) with its missing leading dimensions as size 1."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def pick(t, b, h, q, kv):
    """Entry (b, h, q, kv) of a 4-d t whose size-1 dimensions broadcast."""
    index = [i if n > 1 else 0 for i, n in zip((b, h, q, kv), t.shape)]
    return t[index[0], index[1], index[2], index[3]]


def key_bias(bias):
    """A bias that varies over keys (and the batch) only, as (B or 1, Tk); None if it varies over heads or queries
    (content-dependent, e.g. DeBERTa's) or there is none."""
    if bias is None or bias.dim() > 4:
        return None
    full = as_4d(bias)
    return full[:, 0, 0] if full.size(1) == 1 and full.size(2) == 1 else None


def own_pattern(mask):
    return (type(mask).mask_mod is not AttnMask.mask_mod or type(mask).dense_allowed is not AttnMask.dense_allowed)


def use_flex(q, mask, dropout_p=0.0):
    """Whether auto_attention hands a call to FlexAttention: on CUDA, without attention dropout (Flex has none), when
    flex_pays. CPU stays on SDPA (Flex has no backward there)."""
    return q.is_cuda and not dropout_p and flex_pays(mask, q.size(-2))


def flex_pays(mask, Tq):
    """Whether a mask is one SDPA cannot skip work for and Flex can: a limited reach or a distance bias (windows,
    spans, periodic masks, ALiBi), a pattern of its own (duo), documents, or key padding, over several queries.
    Plain causal stays on flash SDPA; one decoding query, and a bias that varies over queries alone (DeBERTa's),
    stay on SDPA."""
    if Tq == 1:
        return False
    return (mask.reach() is not None or mask.segments is not None or own_pattern(mask)
            or key_bias(mask.bias) is not None)


def flex_score_mod(mask):
    """score_mod(score, b, h, q_idx, kv_idx) adding the mask's biases, or None. The tensors it reads keep their
    autograd graph: on CUDA gradients flow to learnable biases (adaptive span's log-mask, and through it to the span,
    period and ratio parameters)."""
    terms = []
    if mask.distance_bias is not None:
        table = mask.distance_bias
        off, by_head = torch.full((), mask.q_offset, device=table.device), table.size(0) > 1
        terms.append(lambda b, h, q, kv: table[h if by_head else 0, (q + off - kv).clamp(0, table.size(-1) - 1)])
    if mask.bias is not None:
        bias = as_4d(mask.bias)
        terms.append(lambda b, h, q, kv: pick(bias, b, h, q, kv))
    if not terms:
        return None

    def score_mod(score, b, h, q, kv):
        for term in terms:
            score = score + term(b, h, q, kv).to(score.dtype)
        return score
    return score_mod


def flex_block_mask(mask, Tq, Tk, batch, device):
    """The BlockMask of the pairs the mask allows (None: all), plus the keys its bias excludes. A pattern without
    tensors (causal, window, reach, a subclass's own fields) is cached per (pattern, lengths, device); one that reads
    tensors (documents, padding) is kept while calls bring the same tensors, unchanged: the layers of one forward
    pass. Under torch.compile it is built in the graph."""
    keys = key_bias(mask.bias)
    plain, tensors = [type(mask), mask.reach(), Tq, Tk, str(device)], []
    for f in fields(mask):
        if f.name not in ("distance_bias", "bias", "block"):
            value = getattr(mask, f.name)
            (tensors if isinstance(value, torch.Tensor) else plain).append(value)
    # a pattern can differ across the batch only through its tensors (documents, a subclass's) or per-row padding
    B = batch if tensors or (keys is not None and keys.size(0) > 1) else None
    if keys is not None:
        tensors.append(mask.bias)  # the object every layer of a forward pass shares (keys is a fresh view)
    key = tuple(plain + [B])

    def build():
        mod = mask.mask_mod(Tq, Tk, device)
        if keys is not None:
            kept = (keys.detach() > torch.finfo(keys.dtype).min / 2)[:, None, None, :]
            key_mod = lambda b, h, q, kv: pick(kept, b, h, q, kv)
            mod = key_mod if mod is None else and_masks(mod, key_mod)
        return None if mod is None else create_block_mask(mod, B, None, Tq, Tk, device=device)

    if torch.compiler.is_compiling():
        return build()
    if not tensors:
        if key in _block_masks:
            _block_masks.move_to_end(key)
        else:
            _block_masks[key] = build()
            if len(_block_masks) > BLOCK_MASK_CACHE:
                _block_masks.popitem(last=False)
        return _block_masks[key]
    versions = [None if t.is_inference() else t._version for t in tensors]  # inference tensors keep no version
    seen = _FLEX["tensors"]
    if (seen is None or len(seen[0]) != len(tensors) or any(a is not b for a, b in zip(seen[0], tensors))
            or seen[1] != versions):
        seen = _FLEX["tensors"] = (tensors, versions, {})
    if key not in seen[2]:
        seen[2][key] = build()
    return seen[2][key]


def flex_kernel(q):
    """FlexAttention compiled once on CUDA (a torch.compile'd model traces it in place); eager elsewhere, where it
    is a reference that materialises the scores."""
    if not q.is_cuda or torch.compiler.is_compiling():
        return torch_flex_attention
    if _FLEX["kernel"] is None:
        _FLEX["kernel"] = torch.compile(torch_flex_attention)
    return _FLEX["kernel"]


def flex_attention(q, k, v, mask: AttnMask, dropout_p=0.0, scale=None):
    """Attention through FlexAttention: mask_mod and key padding as a block mask, biases as a score_mod."""
    if dropout_p:
        raise ValueError(FLEX_NO_DROPOUT)
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise ValueError(FLEX_NO_CPU_BACKWARD)
    block_mask = flex_block_mask(mask, q.size(-2), k.size(-2), q.size(0), q.device)
    kernel, score_mod = flex_kernel(q), flex_score_mod(mask)
    if kernel is torch_flex_attention and not torch.compiler.is_compiling():
        with warnings.catch_warnings():  # the eager reference is meant here: no advice to compile it
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
            return kernel(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return kernel(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


KERNELS = {"auto": auto_attention, "sdpa": sdpa_attention, "flex": flex_attention, "dense": dense_attention}


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
