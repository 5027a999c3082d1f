"""Shared machinery of the bidirectional encoders (BERT, ALBERT, DeBERTa), SPEC §4.3-4.5, plus the small helper that
copies Hugging Face weights into our models (also used by LLaMA).

An encoder is a GPT subclass whose training batch is built by prepare_batch from the plain token blocks train.py
samples:

    [CLS] A [SEP] B [SEP]    token types 0...0 1...1   (NSP: B follows A, or is a random segment from another row;
                                                          SOP: A and B consecutive, kept in order or swapped)
    [CLS] tokens [SEP]       token types 0             (MLM only, DeBERTa)

then MLM-masked (15 % of the non-special tokens; of those 80 % -> [MASK], 10 % -> a random token, 10 % kept; ALBERT
selects n-grams, n <= 3). The four special tokens are appended after the data vocabulary (model_vocab_size).
Blocks are post-LN (x = LN(x + Attn(x)); x = LN(x + FFN(x))) with exact GELU, attention is bidirectional plus an
optional key-padding mask that run_blocks builds once for all layers. The MLM head is dense -> GELU -> LayerNorm ->
matmul with the (tied) word embeddings + a bias, evaluated only on the masked positions while training; the pair head
is a tanh pooler on [CLS] followed by Linear(H, 2).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, AttnMask, CausalSelfAttention, GPTConfig, make_gelu

N_SPECIAL = 4  # [PAD] [CLS] [SEP] [MASK], the last four ids of the model vocabulary
PAIR_TASKS = ("nsp", "sop", "none")


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face import helpers (shared by every from_pretrained here)

def copy_weights(model, tensors, allow_missing=()):
    """Copy {our state-dict key: tensor} into model, insisting every weight of ours is covered and shapes agree."""
    sd = model.state_dict()
    unknown = [k for k in tensors if k not in sd]
    missing = [k for k in sd if k not in tensors and not k.startswith(tuple(allow_missing))]
    if unknown or missing:
        raise ValueError(f"checkpoint does not fit the model: unknown {unknown[:3]}, missing {missing[:3]}")
    with torch.no_grad():
        for k, v in tensors.items():
            if sd[k].shape != v.shape:
                raise ValueError(f"shape mismatch for {k}: ours {tuple(sd[k].shape)}, checkpoint {tuple(v.shape)}")
            sd[k].copy_(v)


def hf_overrides(config, overrides):
    """Apply train.py/sample.py overrides (e.g. dropout) to a config read from a checkpoint. A requested smaller
    block_size is returned, not applied: position tables are loaded at full size and cropped afterwards."""
    overrides = dict(overrides)
    block_size = overrides.pop("block_size", config.block_size)
    if block_size > config.block_size:
        raise ValueError(f"block_size={block_size} exceeds the checkpoint's {config.block_size} positions")
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"unknown override {key!r}")
        setattr(config, key, value)
    config.validate()
    return block_size


def hf_linear(ours, sd, dst, src, bias=True):
    """Map one HF Linear/LayerNorm (weight, bias) onto ours."""
    ours[dst + ".weight"] = sd[src + ".weight"]
    if bias:
        ours[dst + ".bias"] = sd[src + ".bias"]


def hf_embeddings(ours, sd, e):
    """HF word, position and token-type tables and the embedding LayerNorm under prefix e (BERT, ALBERT)."""
    for dst, src in (("wte", "word_embeddings"), ("wpe", "position_embeddings"), ("wtt", "token_type_embeddings")):
        ours[f"transformer.{dst}.weight"] = sd[e + src + ".weight"]
    hf_linear(ours, sd, "transformer.ln_emb", e + "LayerNorm")


def hf_fused_qkv(ours, sd, o, p):
    """HF's separate query, key and value Linears under p (BERT, ALBERT) as block o's fused c_attn."""
    for part in ("weight", "bias"):
        ours[o + "attn.c_attn." + part] = torch.cat([sd[p + f"{n}.{part}"] for n in ("query", "key", "value")])


BERT_LAYER = ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
              "output.LayerNorm")  # HF names of attn.c_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2 in BERT and DeBERTa


def hf_post_ln_layer(ours, sd, o, p, names=BERT_LAYER):
    """An HF post-LN layer's attention output, FFN and two LayerNorms (under p) onto block o."""
    for dst, src in zip(("attn.c_proj", "ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2"), names, strict=True):
        hf_linear(ours, sd, o + dst, p + src)


def hf_mlm_head(ours, sd, dense, norm, bias):
    """The MLM transform (dense, LayerNorm) and output bias; the decoder weight is tied to wte."""
    hf_linear(ours, sd, "mlm_dense", dense)
    hf_linear(ours, sd, "mlm_ln", norm)
    ours["mlm_bias"] = sd[bias]


# ----------------------------------------------------------------------------------------------------------------

@dataclass
class EncoderConfig(GPTConfig):
    vocab_size: int = 50304 + N_SPECIAL  # data vocabulary + [PAD] [CLS] [SEP] [MASK] (train.py sets it from the data)
    ffn_hidden: int = 0  # 0 = 4 * n_embd
    embedding_size: int = 0  # input embedding width E; 0 = n_embd (ALBERT factorises E -> H)
    type_vocab_size: int = 2  # token types (segments A/B); 0 = none
    layer_norm_eps: float = 1e-12
    mlm_prob: float = 0.15
    max_ngram: int = 1  # MLM selects spans of 1..max_ngram tokens with p(n) ~ 1/n (ALBERT: 3)
    pair_task: str = "nsp"  # "nsp" (BERT), "sop" (ALBERT) or "none" (MLM only)

    def validate(self):
        super().validate()
        if self.vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size must exceed the {N_SPECIAL} special tokens, got {self.vocab_size}")
        if not 0.0 < self.mlm_prob < 1.0:
            raise ValueError(f"mlm_prob must be in (0, 1), got {self.mlm_prob}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {self.max_ngram}")
        if self.pair_task not in PAIR_TASKS:
            raise ValueError(f"pair_task must be one of {', '.join(PAIR_TASKS)}, got {self.pair_task!r}")
        if self.pair_task != "none" and self.type_vocab_size < 2:
            raise ValueError(f"pair_task={self.pair_task!r} needs type_vocab_size >= 2 (segments A and B)")
        if self.ffn_hidden < 0 or self.embedding_size < 0 or self.type_vocab_size < 0 or self.layer_norm_eps <= 0:
            raise ValueError("ffn_hidden, embedding_size and type_vocab_size must be >= 0 and layer_norm_eps > 0")
        if self.block_size < 8:
            raise ValueError(f"block_size must be >= 8 to hold [CLS] A [SEP] B [SEP], got {self.block_size}")

    def emb_dim(self):
        return self.embedding_size or self.n_embd

    def special_ids(self):
        """{name: id}: the four special tokens sit at the end of the model vocabulary."""
        base = self.vocab_size - N_SPECIAL
        return {"pad": base, "cls": base + 1, "sep": base + 2, "mask": base + 3}


class BidirectionalSelfAttention(CausalSelfAttention):
    def mask(self, Tq, Tk, q_offset):
        return AttnMask(causal=False, q_offset=q_offset)

    def attended_entries(self, T):
        return T * T


class EncoderMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.ffn_hidden or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.act = make_gelu(config)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class PostLNBlock(nn.Module):
    """Original Transformer/BERT residual order: normalise after adding the sub-layer output."""

    def __init__(self, config, attn):
        super().__init__()
        self.attn = attn
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = EncoderMLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)

    def forward(self, x, pos, cache=None, mask=None):
        x = self.ln_1(x + self.attn(x, pos, None, mask))
        return self.ln_2(x + self.mlp(x))


class Encoder(GPT):
    """Base of the encoders: embeddings, post-LN stack, MLM and pair heads, batch construction, metrics, fill-mask."""
    config_class = EncoderConfig
    is_causal = False
    scale_residual_init = False  # BERT init: N(0, 0.02) everywhere, zero biases (post-LN: no residual scaling)
    input_positions = True  # absolute positions added at the input (DeBERTa: False)

    def __init__(self, config):
        super().__init__(config)
        c, E, H = config, config.emb_dim(), config.n_embd
        # GPT's final LayerNorm and tied LM head do not exist in a post-LN encoder; its heads are built here instead
        del self.transformer["ln_f"]
        del self.lm_head
        new = []
        if E != H:
            self.transformer.wte = nn.Embedding(c.vocab_size, E)
            self.transformer.emb_proj = nn.Linear(E, H)
            new += [self.transformer.wte, self.transformer.emb_proj]
        if c.type_vocab_size:
            self.transformer.wtt = nn.Embedding(c.type_vocab_size, E)
            new.append(self.transformer.wtt)
        self.transformer.ln_emb = nn.LayerNorm(E, eps=c.layer_norm_eps)
        self.mlm_dense = nn.Linear(H, E)
        self.mlm_act = make_gelu(c)
        self.mlm_ln = nn.LayerNorm(E, eps=c.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))
        new.append(self.mlm_dense)
        if c.pair_task != "none":
            self.pooler = nn.Linear(H, H)
            self.pair_head = nn.Linear(H, 2)
            new += [self.pooler, self.pair_head]
        for module in new:
            self._init_weights(module)

    # structure hooks --------------------------------------------------------------------------------------------
    def make_attention(self, layer_idx):
        return BidirectionalSelfAttention(self.config, layer_idx)

    def make_block(self, layer_idx):
        return PostLNBlock(self.config, self.make_attention(layer_idx))

    def make_position_embedding(self):
        return nn.Embedding(self.config.block_size, self.config.emb_dim())

    @classmethod
    def model_vocab_size(cls, data_vocab_size):
        n = data_vocab_size + N_SPECIAL
        return n if n < 1024 else -(-n // 64) * 64  # specials stay the last four ids after padding

    def embed(self, idx, pos, token_type_ids=None, attention_mask=None, **batch):
        t = self.transformer
        x = t.wte(idx)
        if self.input_positions:
            x = x + t.wpe(pos)
        if "wtt" in t:
            x = x + t.wtt(torch.zeros_like(idx) if token_type_ids is None else token_type_ids)
        x = t.drop(t.ln_emb(x))
        return t.emb_proj(x) if "emb_proj" in t else x

    def shared_mask(self, x, attention_mask=None):
        """Bidirectional, plus key padding when attention_mask (B, T: 1 = token, 0 = [PAD]) is given."""
        if attention_mask is None:
            return AttnMask(causal=False)
        pad = ~attention_mask.bool()[:, None, None, :]
        return AttnMask(causal=False, bias=torch.zeros(pad.shape, dtype=x.dtype, device=x.device)
                        .masked_fill(pad, torch.finfo(x.dtype).min))

    def run_blocks(self, x, pos, caches=None, attention_mask=None, **batch):
        mask = self.shared_mask(x, attention_mask)
        for block in self.transformer.h:
            x = block(x, pos, None, mask)
        return x

    # accounting ---------------------------------------------------------------------------------------------------
    def linear_calls_per_token(self, module, T):
        return 1 / T if module is getattr(self, "pooler", None) or module is getattr(self, "pair_head", None) else 1

    def flops_per_token(self, T, training=False):
        """Plus the MLM decoder (an F.linear on the tied word embeddings, not an nn.Linear); in training the MLM
        head runs on the masked positions only, about mlm_prob of them."""
        f = super().flops_per_token(T)  # has mlm_dense at one call per token
        head = 2 * self.mlm_dense.weight.numel() + 2 * self.transformer.wte.weight.numel()
        share = self.config.mlm_prob if training else 1.0  # of the positions, those the MLM head runs on
        f["matmul"] += share * head - 2 * self.mlm_dense.weight.numel()
        f["total"] = f["matmul"] + f["attention"]
        return f

    # heads ----------------------------------------------------------------------------------------------------------
    def mlm_logits(self, h):
        h = self.mlm_ln(self.mlm_act(self.mlm_dense(h)))
        return F.linear(h, self.transformer.wte.weight, self.mlm_bias)

    def pair_logits(self, h):
        return self.pair_head(torch.tanh(self.pooler(h[:, 0])))

    def forward(self, idx, targets=None, caches=None, pos_offset=0, last_only=False, pair_labels=None, **batch):
        """logits = {'mlm': (B, T, V), or (N, V) over the N masked positions when targets are given, and
        'pair': (B, 2) for NSP/SOP}. Overridden because GPT.head(x) cannot see which positions are masked."""
        if caches is not None or pos_offset or last_only:
            raise ValueError(f"variant {self.variant_name!r} is a bidirectional encoder: no KV cache or offsets")
        pos = self.positions(idx)
        h = self.run_blocks(self.embed(idx, pos, **batch), pos, None, **batch)
        logits = {"mlm": self.mlm_logits(h if targets is None else h[targets != -1])}
        if self.config.pair_task != "none":
            logits["pair"] = self.pair_logits(h)
        loss = None if targets is None else self.compute_loss(logits, targets, pair_labels)
        return logits, loss

    def compute_loss(self, logits, targets, pair_labels=None, **batch):
        mlm = logits["mlm"]
        if mlm.dim() == 3:
            mlm = mlm[targets != -1]
        loss = F.cross_entropy(mlm, targets[targets != -1])
        if "pair" in logits and pair_labels is not None:
            loss = loss + F.cross_entropy(logits["pair"], pair_labels)
        return loss

    @torch.no_grad()
    def eval_metrics(self, logits, targets, pair_labels=None, **batch):
        """'loss' = CE over the masked tokens only (so eval ppl is the masked-token perplexity)."""
        mlm, t = logits["mlm"], targets[targets != -1]
        if mlm.dim() == 3:
            mlm = mlm[targets != -1]
        out = {"loss": (F.cross_entropy(mlm.float(), t, reduction="sum"), t.numel()),
               "mlm_acc": ((mlm.argmax(-1) == t).sum(), t.numel())}
        if "pair" in logits and pair_labels is not None:
            task, n = self.config.pair_task, pair_labels.numel()
            out[f"{task}_acc"] = ((logits["pair"].argmax(-1) == pair_labels).sum(), n)
            out[f"{task}_loss"] = (F.cross_entropy(logits["pair"].float(), pair_labels, reduction="sum"), n)
        return out

    # batches --------------------------------------------------------------------------------------------------------
    def prepare_batch(self, x, y, generator=None):
        """Sentence pairs + MLM masking from (B, T) token blocks; y (next tokens) is not used. In eval mode, without a
        generator, the randomness is seeded from the tokens themselves so every evaluation sees the same masks."""
        if generator is None and not self.training:
            generator = torch.Generator().manual_seed(int(x[:, :16].sum()) * 1_000_003 + int(x[:, -1].sum()))
        elif generator is not None and generator.device.type != "cpu":  # train.py hands a CUDA generator on GPUs
            generator = torch.Generator().manual_seed(generator.initial_seed())
        ids, types, labels = self.make_pairs(x.cpu(), generator)
        ids, targets = self.mask_tokens(ids, generator)
        batch = {"idx": ids.to(x.device), "targets": targets.to(x.device), "token_type_ids": types.to(x.device)}
        if labels is not None:
            batch["pair_labels"] = labels.to(x.device)
        return batch

    def make_pairs(self, x, g):
        c, sp = self.config, self.config.special_ids()
        B, T = x.shape
        cls_, sep = torch.full((1,), sp["cls"]), torch.full((1,), sp["sep"])
        if c.pair_task == "none":
            ids = torch.cat([cls_.expand(B, 1), x[:, :T - 2], sep.expand(B, 1)], dim=1)
            return ids, torch.zeros_like(ids), None
        if c.pair_task == "nsp" and B < 2:
            raise ValueError("NSP draws random second segments from other rows: batch_size must be >= 2")
        n = T - 3  # tokens left for A and B
        lo = max(1, n // 4)
        len_a = torch.randint(lo, n - lo + 1, (B,), generator=g)
        negative = torch.rand(B, generator=g) < 0.5
        other = (torch.arange(B) + torch.randint(1, max(B, 2), (B,), generator=g)) % B  # never the row itself
        rows, types = [], []
        for r in range(B):
            la = int(len_a[r])
            a, b = x[r, :la], x[r, la:n]
            if negative[r] and c.pair_task == "nsp":
                b = x[other[r], la:n]  # a segment from another random place in the corpus
            elif negative[r]:
                a, b = b, a  # SOP: the same two consecutive segments, swapped
            rows.append(torch.cat([cls_, a, sep, b, sep]))
            types.append(torch.cat([torch.zeros(len(a) + 2, dtype=torch.long), torch.ones(len(b) + 1, dtype=torch.long)]))
        # labels as in transformers: 0 = B follows A / in order, 1 = random / swapped
        return torch.stack(rows), torch.stack(types), negative.long()

    def mask_tokens(self, ids, g):
        c, sp = self.config, self.config.special_ids()
        candidate = ids < sp["pad"]
        u = torch.rand(ids.shape, generator=g)
        if c.max_ngram == 1:
            chosen = (u < c.mlm_prob) & candidate
        else:
            # n-gram masking (ALBERT): span starts with rate p / E[n], lengths n with p(n) ~ 1/n, so ~p of the tokens
            p_n = torch.tensor([1.0 / n for n in range(1, c.max_ngram + 1)])
            p_n /= p_n.sum()
            mean_n = float((p_n * torch.arange(1, c.max_ngram + 1)).sum())
            starts = (u < c.mlm_prob / mean_n) & candidate
            lengths = torch.multinomial(p_n, ids.numel(), replacement=True, generator=g).view(ids.shape) + 1
            chosen = torch.zeros_like(starts)
            for s in range(c.max_ngram):
                chosen[:, s:] |= (starts & (lengths > s))[:, :ids.size(1) - s]
            chosen &= candidate
        if not chosen.any():  # an all-ignored batch would make the MLM loss NaN
            chosen.view(-1)[candidate.view(-1).nonzero()[0]] = True
        targets = torch.where(chosen, ids, torch.full_like(ids, -1))
        r = torch.rand(ids.shape, generator=g)
        random_ids = torch.randint(0, sp["pad"], ids.shape, generator=g)
        ids = torch.where(chosen & (r < 0.8), torch.full_like(ids, sp["mask"]), ids)  # 80 % [MASK]
        ids = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, ids)  # 10 % random token, 10 % unchanged
        return ids, targets

    # inference ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fill_mask(self, segments, top_k=5):
        sp = self.config.special_ids()
        ids = [sp["cls"]]
        for i, seg in enumerate(segments):
            ids += list(seg) + ([sp["mask"]] if i < len(segments) - 1 else [sp["sep"]])
        if len(ids) > self.config.block_size:
            raise ValueError(f"the prompt with [CLS]/[SEP] is {len(ids)} tokens but block_size is "
                             f"{self.config.block_size}")
        dev = self.transformer.wte.weight.device
        idx = torch.tensor(ids, device=dev)[None]
        logits = self(idx)[0]["mlm"][0, idx[0] == sp["mask"]].float()
        logits[:, sp["pad"]:] = float("-inf")  # never propose a special token
        probs = torch.softmax(logits, -1)
        top = torch.topk(probs, min(top_k, sp["pad"]), dim=-1)
        return [list(zip(i.tolist(), p.tolist())) for p, i in zip(top.values, top.indices)]

    def generate(self, *args, **kwargs):
        raise ValueError(f"variant {self.variant_name!r} is not autoregressive; use its fill-mask mode "
                         f"(sample.py --mode=fill)")

    def make_caches(self, *args, **kwargs):
        raise ValueError(f"variant {self.variant_name!r} is a bidirectional encoder and has no KV cache")

    def finish_import(self, ours, block_size, allow_missing=()):
        copy_weights(self, ours, allow_missing)
        if block_size < self.config.block_size:
            self.crop_block_size(block_size)
        return self
