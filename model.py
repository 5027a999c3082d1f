"""
A plain GPT (GPT-2 architecture, as in nanoGPT) plus the small set of hooks every variant plugs into.

Reading order: GPTConfig -> attention kernels -> CausalSelfAttention -> MLP/Block -> GPT.
A variant is a GPT subclass in its own file, registered with @register("name"), that overrides only the hooks it
needs (see the "hooks" comments below). model.py imports no variant.
"""
import difflib
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2
    attn_impl: str = "sdpa"  # "sdpa" (fast path) or "dense" (readable reference, also gives attention weights)
    hidden_act: str = "gelu"  # "gelu" (exact, as nanoGPT; 2-3x cheaper on CPU) or "gelu_tanh" (GPT-2's own, for its weights)

    def validate(self):
        """Raise ValueError naming the first inconsistent field. Variants extend this."""
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_impl not in ("sdpa", "dense"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'dense', got {self.attn_impl!r}")
        if self.hidden_act not in ("gelu", "gelu_tanh"):
            raise ValueError(f"hidden_act must be 'gelu' or 'gelu_tanh', got {self.hidden_act!r}")


# ----------------------------------------------------------------------------------------------------------------
# Registry: variants are chosen by name; every registered class is a GPT subclass with its own config dataclass.

VARIANTS = {}


def register(name):
    def wrap(cls):
        if name in VARIANTS:
            raise ValueError(f"variant {name!r} registered twice")
        cls.variant_name = name
        VARIANTS[name] = cls
        return cls
    return wrap


def get_variant(name):
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown variant {name!r}{hint} (known: {', '.join(sorted(VARIANTS))})")
    return VARIANTS[name]


# ----------------------------------------------------------------------------------------------------------------
# Attention kernels. A mask is described, not materialised, so fast paths can skip work it rules out.

@dataclass
class AttnMask:
    """Which (query, key) pairs may interact, plus optional additive score biases.

    Query i (0-based within the call) sits at absolute position q_offset + i; key j at absolute position j; their
    distance is d = q_offset + i - j.
    causal:        only d >= 0.
    window:        only d < window (sliding windows).
    distance_bias: (H, D) additive bias by distance, d in [0, D); implies window D. Learned log-masks such as adaptive
                   span and periodic masking are functions of distance, so blocked kernels can slice them for free.
    allowed:       an explicit bool (Tq, Tk) pattern ANDed with the rest (duo, padding...).
    bias:          an additive float term broadcastable to (B, H, Tq, Tk), may require grad (DeBERTa).
    block:         query block of the banded fast path (0: chosen from the reach by band_block).
    """
    causal: bool = True
    window: int | None = None
    q_offset: int = 0
    distance_bias: torch.Tensor | None = None
    allowed: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    block: int = 0

    def is_plain_causal(self):
        return (self.causal and self.window is None and self.distance_bias is None and self.allowed is None
                and self.bias is None)

    def reach(self):
        """Largest distance that can be attended (+1), or None if unlimited."""
        limits = [w for w in (self.window, None if self.distance_bias is None else self.distance_bias.size(-1))
                  if w is not None]
        return min(limits) if limits else None

    def distances(self, Tq, Tk, device):
        return (torch.arange(Tq, device=device)[:, None] + self.q_offset) - torch.arange(Tk, device=device)[None, :]

    def dense_allowed(self, Tq, Tk, device):
        """The (Tq, Tk) bool matrix of allowed pairs (or None if everything is allowed)."""
        keep, reach = self.allowed, self.reach()
        if self.causal or reach is not None:
            dist = self.distances(Tq, Tk, device)
            geo = dist >= 0 if self.causal else torch.ones_like(dist, dtype=torch.bool)
            if reach is not None:
                geo = geo & (dist < reach)
            keep = geo if keep is None else keep & geo
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
    if (reach is not None and mask.causal and mask.q_offset == 0 and Tq == Tk and mask.allowed is None
            and mask.bias is None):
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
    q_blocks, k_blocks, v_blocks = fold(F.pad(q, (0, 0, 0, pad)).view(B, H, nb, b, hd), b), gather(k), gather(v)
    if by_head:  # a learnable bias: plain matmuls (SDPA's math path would scale k too and add passes)
        tile = mask.distance_bias[:, dist.clamp(0, mask.distance_bias.size(-1) - 1)].to(q.dtype)  # (H, b, K)
        bias = (tile[:, None] + torch.zeros_like(keep, dtype=q.dtype).masked_fill(~keep, float("-inf")))
        scores = (q_blocks * (hd ** -0.5 if scale is None else scale)) @ k_blocks.transpose(-1, -2)
        probs = torch.softmax(scores + bias.reshape(1, H * nb, b, K), dim=-1)
        probs = F.dropout(probs, dropout_p) if dropout_p else probs
        return (probs @ v_blocks).view(B, H, nb * b, hd)[:, :, :T]
    y = F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, dropout_p=dropout_p, scale=scale,
                                       attn_mask=keep[None, :, None].expand(B, nb, 1, b, K).reshape(B * nb, 1, b, K))
    return y.view(B, nb, H, b, hd).transpose(1, 2).reshape(B, H, nb * b, hd)[:, :, :T]


ATTENTION_KERNELS = {"sdpa": sdpa_attention, "dense": dense_attention}


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


# ----------------------------------------------------------------------------------------------------------------
# The GPT-2 block.

class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head, self.n_embd, self.layer_idx = config.n_head, config.n_embd, layer_idx
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kernel = ATTENTION_KERNELS[config.attn_impl]

    # hooks ----------------------------------------------------------------------------------------------------
    def rotate(self, q, k, pos):
        """Position-dependent transform of q, k (B, H, T, hd) at absolute positions pos (T,). Rotary variants."""
        return q, k

    def mask(self, Tq, Tk, q_offset):
        """The AttnMask for Tq queries starting at absolute position q_offset over Tk keys. Masking variants."""
        return AttnMask(causal=True, q_offset=q_offset)

    def mix_heads(self, y):
        """Transform per-head outputs (B, H, T, hd) before the heads are merged. Drift/diffusion."""
        return y

    # ----------------------------------------------------------------------------------------------------------
    def split_heads(self, t):
        B, T, _ = t.shape
        return t.view(B, T, -1, self.head_dim).transpose(1, 2)

    def qkv(self, x, pos):
        """Queries, keys and values (B, heads, T, hd) at positions pos, rotated. Grouped-query variants return
        fewer key/value heads; they are shared out after the cache, so the cache stays small."""
        q, k, v = map(self.split_heads, self.c_attn(x).split(self.n_embd, dim=2))
        return (*self.rotate(q, k, pos), v)

    def forward(self, x, pos, cache=None, mask=None):
        """mask: an AttnMask the model computed once for all layers (duo, padding); else this layer's mask()."""
        q, k, v = self.qkv(x, pos)
        q_offset = 0  # keys already cached precede the new queries (a python int: no device sync, compile-friendly)
        if cache is not None:
            q_offset = cache.len
            k, v = cache.append(k, v)
        if mask is None:
            mask = self.mask(q.size(-2), k.size(-2), q_offset)
        k, v = share_kv_heads(k, q.size(1)), share_kv_heads(v, q.size(1))
        y = self.kernel(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)
        y = self.mix_heads(y)
        y = y.transpose(1, 2).contiguous().view(x.shape)
        return self.resid_dropout(self.c_proj(y))

    def attention_weights(self, x, pos, mask=None):
        """(B, H, T, T) attention probabilities via the dense reference, for analysis and heatmaps. Takes the same
        inputs as forward (capture them with a forward pre-hook)."""
        q, k, v = self.qkv(x, pos)
        mask = self.mask(q.size(-2), k.size(-2), 0) if mask is None else mask
        k, v = share_kv_heads(k, q.size(1)), share_kv_heads(v, q.size(1))
        return dense_attention(q, k, v, mask, return_weights=True)[1]

    applications = 1  # how often the module runs per forward pass (ALBERT's shared layer: n_layer)

    def attended_entries(self, T):
        """How many (query, key) pairs per head one application attends over a length-T sequence."""
        return T * (T + 1) // 2

    def attention_flops(self, T, pairs=None):
        """Forward FLOPs of QK^T and AV (2 * head_dim each per (query, key) pair and head) over a length-T sequence,
        every application; pairs defaults to the attended ones (bench passes T * T for the dense reference path)."""
        pairs = self.attended_entries(T) if pairs is None else pairs
        return 4 * self.head_dim * self.n_head * pairs * self.applications


def hf_activation(name):
    """Our hidden_act for a Hugging Face activation name (GPT-2 uses "gelu_new", BERT "gelu")."""
    acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
    if name not in acts:
        raise ValueError(f"activation {name!r} is not supported ({', '.join(acts)})")
    return acts[name]


def make_gelu(config):
    return nn.GELU(approximate="tanh" if config.hidden_act == "gelu_tanh" else "none")


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = make_gelu(config)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config, attn, mlp):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = attn
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = mlp

    def forward(self, x, pos, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), pos, cache, mask)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------------------------------------------

@register("gpt")
class GPT(nn.Module):
    config_class = GPTConfig
    is_causal = True  # autoregressive LM: generate() and next-token metrics apply; encoders set False

    def __init__(self, config):
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([self.make_block(i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        wpe = self.make_position_embedding()
        if wpe is not None:
            self.transformer.wpe = wpe
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)

    scale_residual_init = True  # GPT-2's 1/sqrt(2 * n_layer) on residual projections; post-LN / lecture models: False

    def _init_weights(self, module):
        # GPT-2 init: N(0, 0.02), zero biases; residual projections scaled by 1/sqrt(2 * n_layer)
        if isinstance(module, nn.Linear):
            scaled = self.scale_residual_init and getattr(module, "residual_scaled_init", False)
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if scaled else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # hooks: model structure ---------------------------------------------------------------------------------------
    def make_attention(self, layer_idx):
        return CausalSelfAttention(self.config, layer_idx)

    def make_block(self, layer_idx):
        return Block(self.config, self.make_attention(layer_idx), MLP(self.config))

    def make_position_embedding(self):
        """Learned absolute positions; variants with rotary/relative positions return None."""
        return nn.Embedding(self.config.block_size, self.config.n_embd)

    def embed(self, idx, pos, **batch):
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(pos)
        return self.transformer.drop(x)

    def positions(self, idx, pos_offset=0, **batch):
        """Absolute position of every input token (duo's interleaved layout shares positions)."""
        T = idx.size(1)
        if pos_offset + T > self.config.block_size:
            raise ValueError(f"sequence reaches position {pos_offset + T} but block_size is {self.config.block_size}")
        return torch.arange(pos_offset, pos_offset + T, device=idx.device)

    def run_blocks(self, x, pos, caches=None, **batch):
        """The stack topology: sequential here; parallel pairs and shared layers override it. A variant whose mask
        is the same for all layers (duo, padding) builds it here once and passes it to every block."""
        for i, block in enumerate(self.transformer.h):
            x = block(x, pos, None if caches is None else caches[i])
        return x

    def head(self, x):
        return self.lm_head(self.transformer.ln_f(x))

    @classmethod
    def model_vocab_size(cls, data_vocab_size):
        """Embedding rows for a dataset's vocabulary. Large vocabularies are padded to a multiple of 64 (faster
        matmuls, as nanoGPT's 50304); variants that add special tokens ([MASK], [CLS]...) add them here."""
        return data_vocab_size if data_vocab_size < 1024 else -(-data_vocab_size // 64) * 64

    # hooks: objective ---------------------------------------------------------------------------------------------
    def prepare_batch(self, x, y, generator=None):
        """Turn a (B, T) token block and its next-token targets into forward() kwargs (duo interleave, MLM...)."""
        return {"idx": x, "targets": y}

    def compute_loss(self, logits, targets, **batch):
        """The training objective (auxiliary terms such as regularisers are added only in training mode)."""
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    @torch.no_grad()
    def eval_metrics(self, logits, targets, **batch):
        """Per-batch sums for evaluation: {name: (sum, count)}. 'loss' must be the pure cross-entropy in nats."""
        flat_t = targets.reshape(-1)
        valid = flat_t != -1
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat_t, ignore_index=-1, reduction="sum")
        correct = (logits.argmax(-1).reshape(-1) == flat_t)[valid].sum()
        n = valid.sum()
        return {"loss": (ce, n), "acc": (correct, n)}

    def log_metrics(self):
        """Scalars about the model itself to log during training (learned spans, periods...)."""
        return {}

    def save_artifacts(self, out_dir):
        """Called once at the end of training (rank 0): write variant-specific plots or tables into out_dir."""

    # ----------------------------------------------------------------------------------------------------------
    def forward(self, idx, targets=None, caches=None, pos_offset=0, last_only=False, **batch):
        pos = self.positions(idx, pos_offset, **batch)
        x = self.run_blocks(self.embed(idx, pos, **batch), pos, caches, **batch)
        if last_only:
            x = x[:, -1:]
        logits = self.head(x)
        loss = None if targets is None else self.compute_loss(logits, targets, **batch)
        return logits, loss

    # generation -----------------------------------------------------------------------------------------------
    def make_caches(self, batch_size, device, dtype):
        """One KV cache per attention call in run_blocks order; windowed variants may keep fewer keys."""
        c = self.config
        return [KVCache(batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, device, dtype)
                for _ in range(c.n_layer)]

    @torch.inference_mode()  # cheaper than no_grad per op, which batch-1 decoding feels
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None):
        """Sample max_new_tokens after idx (B, T). temperature=0 is greedy. Cached decoding equals uncached.

        With a cache each step costs one token's forward pass. Once the sequence outgrows block_size the context is
        cropped to its last block_size tokens as in nanoGPT; absolute positions then shift, so every such step
        recomputes the cropped context (still exactly equal to uncached decoding).
        """
        if not self.is_causal:
            raise ValueError(f"variant {self.variant_name!r} is not autoregressive; use its fill-mask mode")
        bs = self.config.block_size
        caches, fed = None, 0  # fed = tokens of idx already in the caches
        for _ in range(max_new_tokens):
            if not use_cache or idx.size(1) > bs:
                logits, _ = self(idx[:, -bs:], last_only=True)
                caches = None
            else:
                if caches is None:
                    caches, fed = self.make_caches(idx.size(0), idx.device, self.lm_head.weight.dtype), 0
                logits, _ = self(idx[:, fed:], caches=caches, pos_offset=fed, last_only=True)
                fed = idx.size(1)
            idx = torch.cat((idx, self.sample_next(logits[:, -1], temperature, top_k, generator)), dim=1)
        return idx

    @torch.no_grad()
    def fill_mask(self, segments, top_k=5):
        """Predict the one token hidden in each gap between `segments` (lists of token ids), using both sides.
        Returns, per gap, the top_k [(token_id, probability)]. Encoders and duo-predict implement it."""
        raise NotImplementedError(f"variant {self.variant_name!r} has no fill-mask mode")

    @staticmethod
    def sample_next(logits, temperature, top_k, generator=None):
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)

    # accounting -----------------------------------------------------------------------------------------------
    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, T, training=False):
        """Analytic forward FLOPs per token at sequence length T: {'matmul', 'attention', 'total'}.

        matmul: 2 FLOPs per weight of every Linear, times its applications per token (lm_head included; embeddings
        are lookups). attention: each attention module's attention_flops (causal: T(T+1)/2 pairs per head).
        training=True counts the forward of a training step, for variants whose loss reads only some positions.
        Backward costs twice the forward, so a training step is 3x these numbers.
        """
        matmul = sum(2 * m.weight.numel() * self.linear_calls_per_token(m, T)
                     for m in self.modules() if isinstance(m, nn.Linear))
        attention = sum(m.attention_flops(T) for m in self.modules() if isinstance(m, CausalSelfAttention)) / T
        return {"matmul": matmul, "attention": attention, "total": matmul + attention}

    def linear_calls_per_token(self, module, T):
        """How many times a Linear is applied per token of a length-T sequence (a shared layer: once per use; a
        Linear that sees only some rows, like a [CLS] pooler: a fraction)."""
        return 1

    # import -----------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """GPT-2 weights from a Hugging Face checkpoint: 'gpt2', 'gpt2-medium', ... or a local HF directory."""
        from transformers import GPT2LMHeadModel  # optional dependency, only needed here
        hf = GPT2LMHeadModel.from_pretrained(name_or_path)
        hc = hf.config
        block_size = overrides.pop("block_size", hc.n_positions)
        if block_size > hc.n_positions:
            raise ValueError(f"block_size={block_size} exceeds the checkpoint's {hc.n_positions} positions")
        config = cls.config_class(n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd, block_size=hc.n_positions,
                                  vocab_size=hc.vocab_size, bias=True, dropout=0.0,
                                  hidden_act=hf_activation(hc.activation_function))
        for key, value in overrides.items():
            setattr(config, key, value)
        model = cls(config)
        model.load_gpt2_state_dict(hf.state_dict())
        model.crop_block_size(block_size)
        return model

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. 1024 -> 256 after loading GPT-2) by keeping the first position embeddings."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def load_gpt2_state_dict(self, hf_sd):
        """Copy an HF GPT-2 state dict in; HF stores its projections as Conv1D, i.e. transposed Linear weights."""
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        sd = self.state_dict()
        missing = [k for k in hf_sd if k not in sd]
        if missing:
            raise ValueError(f"HF checkpoint has weights this model lacks: {missing[:5]}")
        with torch.no_grad():
            for k, v in hf_sd.items():
                v = v.t() if k.endswith(transposed) else v
                if sd[k].shape != v.shape:
                    raise ValueError(f"shape mismatch for {k}: ours {tuple(sd[k].shape)}, checkpoint {tuple(v.shape)}")
                sd[k].copy_(v)


def model_config_fields(variant):
    """{name: dataclass Field} of the config the variant declares (GPTConfig plus its own fields)."""
    return {f.name: f for f in fields(get_variant(variant).config_class)}
