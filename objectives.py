"""Objectives: how a batch of sampled token blocks becomes the model's input, what the model is asked to predict, the
loss, the eval metrics, the special tokens and fill-mask. A registered variant names its architecture and its
objective; train.py, sample.py, eval.py and bench.py talk to the objective and never learn what a model is.

    NextTokenLM    causal language modelling (every decoder)
    InterleavedLM  duo-predict's layout: originals interleaved with <|MASK|> tokens, two streams (docs/gpt2_variants.md §3)
    MaskedLM       masked language modelling plus NSP or SOP (docs/foundational.md §3-4.5)

What passes from an objective to a model is a Batch; objective.logits(model, batch) hands the model the fields its
forward declares.
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from attention import AttnMask


@dataclass
class Batch:
    idx: torch.Tensor  # (B, L) input token ids
    targets: torch.Tensor  # (B, L) ids to predict, -1 where nothing is scored
    pos: torch.Tensor | None = None  # (L,) absolute position of every input token (None: 0..L-1)
    mask: AttnMask | None = None  # the layout's attention pattern, shared by every layer (None: each layer's own)
    token_types: torch.Tensor | None = None  # (B, L) segment A/B ids
    pair_labels: torch.Tensor | None = None  # (B,) NSP/SOP labels: 0 = B follows A / in order
    pair_task: str = ""  # what pair_labels mean: "nsp" or "sop"
    next_tokens: torch.Tensor | None = None  # (B, N) the next token of every original token (duo's eval)


def padded_vocab(n):
    """Large vocabularies are padded to a multiple of 64 for faster matmuls (nanoGPT's 50304)."""
    return n if n < 1024 else -(-n // 64) * 64


def token_metrics(logits, targets):
    """{'loss': (summed CE in nats, count), 'acc': (correct, count)} over the targets that are not -1."""
    flat_t = targets.reshape(-1)
    valid = flat_t != -1
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat_t, ignore_index=-1, reduction="sum")
    correct = (logits.argmax(-1).reshape(-1) == flat_t)[valid].sum()
    n = valid.sum()
    return {"loss": (ce, n), "acc": (correct, n)}


def top_tokens(logits, top_k, banned_from=None):
    """[(token id, probability)] of the top_k tokens of each row of logits, never proposing ids >= banned_from."""
    logits = logits.float()
    if banned_from is not None:
        logits[:, banned_from:] = float("-inf")
    top = torch.topk(torch.softmax(logits, -1), min(top_k, banned_from or logits.size(-1)), dim=-1)
    return [list(zip(i.tolist(), p.tolist())) for p, i in zip(top.values, top.indices)]


class NextTokenLM:
    causal = True  # generate() applies
    fills = False  # fill_mask() applies

    def vocab_size(self, data_vocab_size):
        """Embedding rows for a dataset's vocabulary (plus the objective's special tokens)."""
        return padded_vocab(data_vocab_size)

    def prepare(self, config, x, y, generator=None):
        """The Batch of (B, T) token blocks x and their next tokens y; generator seeds any randomness."""
        return Batch(idx=x, targets=y)

    def logits(self, model, batch):
        return model(batch.idx, pos=batch.pos, mask=batch.mask)

    def loss(self, logits, batch):
        return F.cross_entropy(logits.view(-1, logits.size(-1)), batch.targets.view(-1), ignore_index=-1)

    def step(self, model, batch, raw_model=None):
        """(logits, loss) of a batch. In training the model's auxiliary loss is added; raw_model is the module under
        any DDP/compile wrapper."""
        logits = self.logits(model, batch)
        loss = self.loss(logits, batch)
        raw = model if raw_model is None else raw_model
        aux = raw.aux_loss() if raw.training else None
        return logits, loss if aux is None else loss + aux

    @torch.no_grad()
    def metrics(self, logits, batch):
        """Per-batch sums for evaluation: {name: (sum, count)}. 'loss' is the pure cross-entropy in nats."""
        return token_metrics(logits, batch.targets)

    def fill_mask(self, model, segments, top_k=5, vocab_size=None):
        raise NotImplementedError("this model has no fill-mask mode (duo-predict and the encoders do)")

    def documents(self, batch, separator, restart_positions=False):
        """The batch with attention cut at the document boundaries of packed text: the token after a separator
        starts a new document (the separator ends its own), and no query sees a key of another document. With
        restart_positions every document's positions count from 0."""
        ends = batch.idx == separator
        segments = torch.cumsum(ends, dim=1) - ends.long()  # separators strictly before each position
        pos = batch.pos
        if restart_positions:
            t = torch.arange(batch.idx.size(1), device=batch.idx.device)
            starts = torch.cat((torch.ones_like(ends[:, :1]), ends[:, :-1]), dim=1)
            pos = t - torch.cummax(torch.where(starts, t, 0), dim=1).values
        return replace(batch, mask=AttnMask(causal=True, segments=segments), pos=pos)


# ---- duo-predict ------------------------------------------------------------------------------------------------

def duo_allowed(L, variant="code", device=None):
    """(L, L) bool: may query a attend key b, in the interleaved layout (0-based; originals at even indices)."""
    a = torch.arange(L, device=device)[:, None]
    b = torch.arange(L, device=device)[None, :]
    a_orig, b_orig = a % 2 == 0, b % 2 == 0
    if variant == "code":
        orig_rows = a_orig & b_orig & (b <= a)
        mask_rows = ~a_orig & ((b_orig & (b <= a - 3)) | (b == a) | (b == a + 1))
    elif variant == "readme":  # the 1-based rules printed in the duo README (i odd: j <= i+1; i even: odd j < i, i, i+1)
        orig_rows = a_orig & (b <= a + 1)
        mask_rows = ~a_orig & ((b_orig & (b < a)) | (b == a) | (b == a + 1))
    else:
        raise ValueError(f"unknown duo mask variant {variant!r}")
    return orig_rows | mask_rows


@dataclass
class DuoMask(AttnMask):
    """The interleaved duo pattern. The dense reference materialises it; duo's attention fast path never does."""
    variant: str = "code"
    causal: bool = False

    def check(self, Tq, Tk):
        """The pattern exists for one whole interleaved sequence: odd length 2N-1, no KV cache."""
        if Tq != Tk or self.q_offset or Tq % 2 == 0:
            raise ValueError(f"the duo pattern needs one whole interleaved sequence of odd length 2N-1 and no KV "
                             f"cache; got {Tq} queries over {Tk} keys at offset {self.q_offset}")

    def dense_allowed(self, Tq, Tk, device):
        self.check(Tq, Tk)
        return duo_allowed(Tq, self.variant, device)


def mask_token_id(config):
    return config.mask_token_id if config.mask_token_id >= 0 else config.vocab_size - 1


def interleave_tokens(x, mask_id):
    """(B, N) originals -> (B, 2N-1) [t0, M, t1, M, ..., t_{N-1}]."""
    B, N = x.shape
    idx = torch.full((B, 2 * N - 1), mask_id, dtype=x.dtype, device=x.device)
    idx[:, 0::2] = x
    return idx


class InterleavedLM(NextTokenLM):
    """Duo-predict (docs/gpt2_variants.md §3): idx = [t0, M, t1, M, ..., t_{N-1}]; t_k and the mask after it share position k. Every
    original predicts the next token; every mask predicts the token it stands in for (duo_loss="intended"), or the
    labels of HF's double shift (duo_loss="hf_double_shift": original t_k -> t_k, mask after t_k -> t_{k+2}). Eval
    reports next-token metrics at the original positions only (comparable with a plain GPT) plus the mask stream's
    loss. Plain token streams (generate) are ordinary causal LM input."""
    fills = True

    def vocab_size(self, data_vocab_size):
        return data_vocab_size + 1  # <|MASK|> = data_vocab_size, not padded so it is the last id

    def prepare(self, config, x, y, generator=None):
        B, N = x.shape
        if N > config.block_size:
            raise ValueError(f"{N} original tokens but block_size is {config.block_size}")
        idx = interleave_tokens(x, mask_token_id(config))
        targets = torch.full_like(idx, -1)
        if config.duo_loss == "intended":
            targets[:, 0::2] = y  # original t_k -> t_{k+1}
            targets[:, 1::2] = x[:, :-1]  # mask after t_k -> t_k
        else:  # hf_double_shift
            targets[:, 0:-1:2] = x[:, :-1]  # original t_k -> t_k (the last original unscored)
            targets[:, 1:-2:2] = x[:, 2:]  # mask after t_k -> t_{k+2} (the last mask unscored)
        pos = torch.arange(2 * N - 1, device=x.device) // 2
        return Batch(idx=idx, targets=targets, pos=pos, mask=DuoMask(variant=config.duo_mask_variant),
                     next_tokens=y)

    def documents(self, batch, separator, restart_positions=False):
        raise ValueError("doc_mask applies to next-token language models; duo-predict's layout has its own pattern")

    @torch.no_grad()
    def metrics(self, logits, batch):
        out = token_metrics(logits[:, 0::2], batch.next_tokens)  # next-token metrics at original positions only
        mask_targets = batch.targets[:, 1::2].reshape(-1)
        ce = F.cross_entropy(logits[:, 1::2].reshape(-1, logits.size(-1)).float(), mask_targets, ignore_index=-1,
                             reduction="sum")
        out["mask_loss"] = (ce, (mask_targets != -1).sum())
        return out

    @torch.no_grad()
    def fill_mask(self, model, segments, top_k=5, vocab_size=None):
        """Predict the token hidden in each gap between segments from the mask that stands in for it: that mask sees
        the tokens before the gap and the token right after it. The hidden original slot holds <|MASK|>. Ids from
        vocab_size (the data's) on are never proposed."""
        mask_id = mask_token_id(model.config)
        originals, holes = [], []
        for i, seg in enumerate(segments):
            originals.extend(seg)
            if i < len(segments) - 1:
                holes.append(len(originals))
                originals.append(mask_id)
        if any(h + 1 >= len(originals) for h in holes):
            raise ValueError("duo-predict fills a gap from the token after it: put some text after the last mask")
        if len(originals) > model.config.block_size:
            raise ValueError(f"{len(originals)} tokens but the model's context is {model.config.block_size}")
        x = torch.tensor([originals], device=next(model.parameters()).device)
        batch = self.prepare(model.config, x, x)
        scores = self.logits(model, batch)[0, [2 * h + 1 for h in holes]].float()
        scores[:, mask_id] = float("-inf")  # the answer is a real token
        return top_tokens(scores, top_k, banned_from=vocab_size)


# ---- masked language modelling ------------------------------------------------------------------------------------

N_SPECIAL = 4  # [PAD] [CLS] [SEP] [MASK], the last four ids of the model vocabulary
PAIR_TASKS = ("nsp", "sop", "none")


def special_ids(vocab_size):
    """{name: id}: the four special tokens sit at the end of the model vocabulary."""
    base = vocab_size - N_SPECIAL
    return {"pad": base, "cls": base + 1, "sep": base + 2, "mask": base + 3}


class MaskedLM(NextTokenLM):
    """Sentence pairs and MLM masking built from the plain token blocks train.py samples:

        [CLS] A [SEP] B [SEP]    token types 0...0 1...1   (NSP: B follows A, or is a random segment from another row;
                                                              SOP: A and B consecutive, kept in order or swapped)
        [CLS] tokens [SEP]       token types 0             (pair_task="none")

    then 15 % of the non-special tokens (mlm_prob) are selected (in n-grams of up to max_ngram tokens); of those 80 %
    become [MASK], 10 % a random token, 10 % stay. The loss is the CE over the selected tokens plus the pair task's."""
    causal = False
    fills = True

    def vocab_size(self, data_vocab_size):
        return padded_vocab(data_vocab_size + N_SPECIAL)  # specials stay the last four ids after padding

    def prepare(self, config, x, y, generator=None):
        """y (next tokens) is not used. Without a generator the randomness is seeded from the tokens themselves, so
        every evaluation of the same blocks sees the same masks."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(x[:, :16].sum()) * 1_000_003 + int(x[:, -1].sum()))
        elif generator.device.type != "cpu":  # train.py hands a CUDA generator on GPUs
            generator = torch.Generator().manual_seed(generator.initial_seed())
        ids, types, labels = self.make_pairs(config, x.cpu(), generator)
        ids, targets = self.mask_tokens(config, ids, generator)
        return Batch(idx=ids.to(x.device), targets=targets.to(x.device), token_types=types.to(x.device),
                     pair_labels=None if labels is None else labels.to(x.device), pair_task=config.pair_task)

    def logits(self, model, batch):
        return model(batch.idx, token_types=batch.token_types, predict=batch.targets != -1)

    def documents(self, batch, separator, restart_positions=False):
        raise ValueError("doc_mask applies to next-token language models; an encoder's pairs are built per row")

    def loss(self, logits, batch):
        targets = batch.targets
        loss = F.cross_entropy(logits["mlm"], targets[targets != -1])
        if "pair" in logits and batch.pair_labels is not None:
            loss = loss + F.cross_entropy(logits["pair"], batch.pair_labels)
        return loss

    @torch.no_grad()
    def metrics(self, logits, batch):
        """'loss' = CE over the masked tokens only (so eval ppl is the masked-token perplexity)."""
        mlm, t = logits["mlm"], batch.targets[batch.targets != -1]
        out = {"loss": (F.cross_entropy(mlm.float(), t, reduction="sum"), t.numel()),
               "mlm_acc": ((mlm.argmax(-1) == t).sum(), t.numel())}
        labels, task = batch.pair_labels, batch.pair_task
        if "pair" in logits and labels is not None:
            out[f"{task}_acc"] = ((logits["pair"].argmax(-1) == labels).sum(), labels.numel())
            out[f"{task}_loss"] = (F.cross_entropy(logits["pair"].float(), labels, reduction="sum"), labels.numel())
        return out

    def make_pairs(self, config, x, g):
        sp = special_ids(config.vocab_size)
        B, T = x.shape
        cls_, sep = torch.full((1,), sp["cls"]), torch.full((1,), sp["sep"])
        if config.pair_task == "none":
            ids = torch.cat([cls_.expand(B, 1), x[:, :T - 2], sep.expand(B, 1)], dim=1)
            return ids, torch.zeros_like(ids), None
        if config.pair_task == "nsp" and B < 2:
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
            if negative[r] and config.pair_task == "nsp":
                b = x[other[r], la:n]  # a segment from another random place in the corpus
            elif negative[r]:
                a, b = b, a  # SOP: the same two consecutive segments, swapped
            rows.append(torch.cat([cls_, a, sep, b, sep]))
            types.append(torch.cat([torch.zeros(len(a) + 2, dtype=torch.long), torch.ones(len(b) + 1, dtype=torch.long)]))
        return torch.stack(rows), torch.stack(types), negative.long()

    def mask_tokens(self, config, ids, g):
        sp = special_ids(config.vocab_size)
        candidate = ids < sp["pad"]
        u = torch.rand(ids.shape, generator=g)
        if config.max_ngram == 1:
            chosen = (u < config.mlm_prob) & candidate
        else:
            # n-gram masking (ALBERT): span starts with rate p / E[n], lengths n with p(n) ~ 1/n, so ~p of the tokens
            p_n = torch.tensor([1.0 / n for n in range(1, config.max_ngram + 1)])
            p_n /= p_n.sum()
            mean_n = float((p_n * torch.arange(1, config.max_ngram + 1)).sum())
            starts = (u < config.mlm_prob / mean_n) & candidate
            lengths = torch.multinomial(p_n, ids.numel(), replacement=True, generator=g).view(ids.shape) + 1
            chosen = torch.zeros_like(starts)
            for s in range(config.max_ngram):
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

    @torch.no_grad()
    def fill_mask(self, model, segments, top_k=5, vocab_size=None):
        """Predict the one token hidden in each gap between `segments` (lists of token ids), from both sides. Only ids
        below vocab_size (the data's; padding rows and the special tokens come after it) are proposed."""
        sp = special_ids(model.config.vocab_size)
        ids = [sp["cls"]]
        for i, seg in enumerate(segments):
            ids += list(seg) + ([sp["mask"]] if i < len(segments) - 1 else [sp["sep"]])
        if len(ids) > model.config.block_size:
            raise ValueError(f"the prompt with [CLS]/[SEP] is {len(ids)} tokens but block_size is "
                             f"{model.config.block_size}")
        idx = torch.tensor(ids, device=next(model.parameters()).device)[None]
        logits = model(idx)["mlm"][0, idx[0] == sp["mask"]]
        return top_tokens(logits, top_k, banned_from=min(vocab_size or sp["pad"], sp["pad"]))
