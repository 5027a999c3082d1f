"""
Adaptive attention span (Sukhbaatar et al. 2019) + learnable periodic "triangle-wave" masking (docs/adaptive_span.md).

Every head h of every layer learns a span z_h = sigmoid(u_h) * max_span. Its soft mask over the relative distance
d = i - j is m_span(d) = clamp((R + z_h - d) / R, 0, 1). With use_triangle_wave_masking the head also learns a period
p_h in [p_min, p_max] and a ratio r_h in (-1/4, 1/4) of a K-harmonic Fourier triangle wave m_tri(d) that drops some
distances periodically. Attention is softmax(s + log m_span + log m_tri): the post-softmax multiply-and-renormalise of
the paper written as an additive log-mask, -inf where a mask is <= 1e-6.

Both masks depend on the distance only, so a layer's whole mask is an (H, D) table (AttnMask.distance_bias), where D,
the layer's reach, is max_h z_h + R rounded up to 16 keys. attention.py's banded path (CPU) and FlexAttention (CUDA:
a block mask cut at D, the table read by a score_mod that passes gradients back to it) then never compute keys
further than D, the dense reference gives the same numbers (tests check outputs and gradients, d/du and d/dperiod
included), and generation keeps only the last D - 1 keys per layer (RollingKVCache).

use_adaptive_attention=False is the baseline of this family: plain causal attention, with the same extra per-block
position embeddings (docs/adaptive_span.md §1), so the three recipes (baseline, span only, span + periodic) differ only in the masks.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from attention import AttnMask, RollingKVCache, executed_entries
from model import GPT, Block, CausalSelfAttention, GPTConfig
from variants.registry import register

MASK_FLOOR = 1e-6  # mask values at or below this are -inf (docs/adaptive_span.md §4)
REACH_QUANTUM = 16  # the reach is rounded up to 16 keys (or the query block, if smaller): shapes (and torch.compile
#                     graphs) change only now and then as spans learn, and few keys are computed in vain


@dataclass
class AdaptiveSpanConfig(GPTConfig):
    use_adaptive_attention: bool = True  # learned spans; False: plain causal attention (the family's baseline)
    use_triangle_wave_masking: bool = False  # needs use_adaptive_attention
    softness_span_mask: float = 32.0  # R, the width of the span's linear ramp
    period_min_triangle_wave_masking: float = 2.0  # smallest period p of the learned triangle wave
    period_max_triangle_wave_masking: float = 8.0  # largest period p
    triangle_wave_harmonics: int = 5  # K of the Fourier triangle wave
    span_reg: float = 4e-6  # lambda of the span loss, added in training mode only
    max_span: int | None = None  # S; None means block_size
    span_init: float | None = None  # initial z of every head; None means u = 0, z = S/2
    block_pos_emb: bool = True  # docs/adaptive_span.md §1: a learned position embedding added before every block but the first
    span_block: int = 64  # query block of the blocked fast path (each block computes block + reach - 1 keys)

    def validate(self):
        super().validate()
        if self.use_triangle_wave_masking and not self.use_adaptive_attention:
            raise ValueError("use_triangle_wave_masking=True requires use_adaptive_attention=True")
        if self.softness_span_mask <= 0:
            raise ValueError(f"softness_span_mask must be > 0, got {self.softness_span_mask}")
        lo, hi = self.period_min_triangle_wave_masking, self.period_max_triangle_wave_masking
        if not 0 < lo < hi:
            raise ValueError(f"need 0 < period_min_triangle_wave_masking < period_max_triangle_wave_masking, "
                             f"got {lo} and {hi}")
        if self.triangle_wave_harmonics < 1:
            raise ValueError(f"triangle_wave_harmonics must be >= 1, got {self.triangle_wave_harmonics}")
        if self.span_reg < 0:
            raise ValueError(f"span_reg must be >= 0, got {self.span_reg}")
        if self.max_span is not None and self.max_span < 1:
            raise ValueError(f"max_span must be >= 1 (or None for block_size), got {self.max_span}")
        S = self.max_span or self.block_size
        if self.span_init is not None and not 0 < self.span_init < S:
            raise ValueError(f"span_init must lie strictly between 0 and max_span={S}, got {self.span_init}")
        if self.span_block < 1:
            raise ValueError(f"span_block must be >= 1, got {self.span_block}")


class TriangleWave(nn.Module):
    """Per-head learnable periodic mask over distance (docs/adaptive_span.md §3): a K-harmonic Fourier triangle wave."""

    def __init__(self, n_head, p_min, p_max, harmonics):
        super().__init__()
        self.p_min, self.p_max = p_min, p_max
        frac = torch.rand(n_head).clamp(1e-3, 1 - 1e-3)  # p ~ U(p_min, p_max), kept off the sigmoid's ends
        self.period_w = nn.Parameter(torch.logit(frac))
        self.ratio_w = nn.Parameter(torch.zeros(n_head))  # r = 0 at init
        k = torch.arange(1, harmonics + 1, dtype=torch.float32)
        self.register_buffer("harmonic", k, persistent=False)
        self.register_buffer("coef", 8 * (1 - (-1) ** k) / (math.pi ** 2 * k ** 2), persistent=False)

    def period(self):
        return self.p_min + (self.p_max - self.p_min) * torch.sigmoid(self.period_w)

    def ratio(self):
        return -0.25 + 0.5 * torch.sigmoid(self.ratio_w)

    def wave(self, d):
        """The unclamped wave (H, len(d)) at float distances d; m_tri = clamp(wave, 0, 1)."""
        p, r = self.period()[:, None], self.ratio()[:, None]
        phase = torch.fmod(2 * math.pi * d / p, 2 * math.pi)
        s = (self.coef[:, None, None] * torch.cos(self.harmonic[:, None, None] * phase)).sum(0)
        return s * (p / 4) / 2 + 0.5 + p * r  # amplitude A = p/4, offset o = p*r

    def density(self):
        """rho_h of docs/adaptive_span.md §5: the kept fraction of a period, or 1 + the wave's minimum when it never reaches 0."""
        p, r = self.period(), self.ratio()
        beta = 1 / p + 2 * r + 0.5
        return torch.where(beta < 1, beta, 1 + 0.5 + p * r - p / 4)


class AdaptiveSpanAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.max_span = config.max_span or config.block_size
        self.softness = float(config.softness_span_mask)
        self.block = config.span_block
        u0 = 0.0 if config.span_init is None else math.log(config.span_init / (self.max_span - config.span_init))
        self.span_params = nn.Parameter(torch.full((config.n_head,), u0))
        self.wave, self._frozen = None, None  # _frozen: (parameter versions, reach, {D: log-mask}) under no_grad
        if config.use_triangle_wave_masking:
            self.wave = TriangleWave(config.n_head, config.period_min_triangle_wave_masking,
                                     config.period_max_triangle_wave_masking, config.triangle_wave_harmonics)

    def spans(self):
        return torch.sigmoid(self.span_params) * self.max_span

    def mask_values(self, D):
        """(m_span, m_tri or None), each (H, D), at distances 0..D-1."""
        d = torch.arange(D, device=self.span_params.device, dtype=torch.float32)
        m_span = ((self.softness + self.spans()[:, None] - d) / self.softness).clamp(0, 1)
        m_tri = None if self.wave is None else self.wave.wave(d).clamp(0, 1)
        return m_span, m_tri

    def log_mask(self, D):
        """The additive (H, D) score bias log(m_span) + log(m_tri), -inf where either mask is <= 1e-6."""
        m_span, m_tri = self.mask_values(D)
        bias = m_span.clamp_min(MASK_FLOOR).log()
        dead = m_span <= MASK_FLOOR
        if m_tri is not None:
            bias = bias + m_tri.clamp_min(MASK_FLOOR).log()
            dead = dead | (m_tri <= MASK_FLOOR)
        return bias.masked_fill(dead, float("-inf"))

    def reach(self):
        """Distances the layer can attend: 0..reach-1, rounded up to the quantum. m_span(d) > 1e-6 needs
        d < z + R(1 - 1e-6); the margin keeps z = 128.00001 (float error) from costing a whole extra quantum."""
        with torch.no_grad():
            r = math.ceil(float(self.spans().max()) + self.softness * (1 - MASK_FLOOR))
        quantum = min(REACH_QUANTUM, self.block)
        return -(-r // quantum) * quantum

    def mask(self, Tq, Tk, q_offset):
        if torch.is_grad_enabled():
            reach, table = self.reach(), self.log_mask
        else:  # eval and decoding: reuse the mask until a parameter changes (in-place updates bump _version)
            key = tuple((p.data_ptr(), p._version) for p in self.mask_parameters())
            if self._frozen is None or self._frozen[0] != key:
                self._frozen = (key, self.reach(), {})
            reach, tables = self._frozen[1], self._frozen[2]
            table = lambda D: tables[D] if D in tables else tables.setdefault(D, self.log_mask(D))
        D = min(reach, q_offset + Tq)  # never longer than the largest distance present
        return AttnMask(causal=True, q_offset=q_offset, distance_bias=table(D), block=self.block)

    def make_cache(self, batch_size, device, dtype):
        return RollingKVCache(self.reach() - 1)  # the next query reaches back reach-1 keys at most

    def mask_parameters(self):
        return [self.span_params] + ([] if self.wave is None else [self.wave.period_w, self.wave.ratio_w])

    def span_loss(self):
        """docs/adaptive_span.md §5 per layer, before lambda: mean_h z_h, or mean_h (z_h + R) * rho_h with the periodic mask."""
        z = self.spans()
        if self.wave is None:
            return z.mean()
        return ((z + self.softness) * self.wave.density()).mean()

    # FLOP accounting (docs/adaptive_span.md §6) ---------------------------------------------------------------------------------
    @torch.no_grad()
    def entries_per_head(self, T):
        """Analytic non-masked (query, key) entries of each head over a length-T causal sequence (H,)."""
        s = (self.spans() + self.softness).clamp(0, T).floor().double()
        if self.wave is None:
            return T * (T + 1) / 2 - (T - s) * (T - s + 1) / 2
        d = torch.arange(T, device=s.device, dtype=torch.float32)
        keep = ((self.wave.wave(d) > 0) & (d[None, :].double() <= s[:, None])).double()
        return keep.cumsum(-1).sum(-1)  # query i sees cumsum(keep)[i] keys

    def attended_entries(self, T):
        return float(self.entries_per_head(T).mean())

    def executed_entries(self, T):
        """(query, key) entries per head the fast path really computes: block + reach - 1 keys per query block."""
        return executed_entries(T, min(self.reach(), T), self.block)


class AdaptiveBlock(Block):
    """Pre-LN block that first adds its own learned position embedding (docs/adaptive_span.md §1, every block but the first)."""

    def __init__(self, config, layer_idx, *parts):
        super().__init__(config, layer_idx, *parts)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd) if config.block_pos_emb and layer_idx else None

    def forward(self, x, pos, cache=None, mask=None):
        return super().forward(x if self.pos_emb is None else x + self.pos_emb(pos), pos, cache, mask)


def span_or_plain_attention(config, layer_idx):
    cls = AdaptiveSpanAttention if config.use_adaptive_attention else CausalSelfAttention
    return cls(config, layer_idx)


@register("adaptive_span")
class AdaptiveSpanGPT(GPT):
    config_class = AdaptiveSpanConfig
    Attention = staticmethod(span_or_plain_attention)
    Block = AdaptiveBlock

    def span_attentions(self):
        return [m for m in self.modules() if isinstance(m, AdaptiveSpanAttention)]

    def span_loss(self):
        """span_reg * sum over layers of the per-layer span loss (docs/adaptive_span.md §5), added to the objective's in training."""
        layers = self.span_attentions()
        if not layers or self.config.span_reg == 0:
            return None
        return self.config.span_reg * sum(m.span_loss() for m in layers)

    def aux_loss(self):
        return self.span_loss()

    # reporting ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def attention_flops_report(self, T=None):
        """Attention cost at sequence length T against dense causal attention, per layer and in total: analytic
        (non-masked entries, docs/adaptive_span.md §6) and executed (entries in the key blocks the fast path computes).
        Only the executed fraction can turn into wall-clock savings."""
        T = T or self.config.block_size
        causal = T * (T + 1) / 2
        layers = []
        for block in self.transformer.h:
            attn = block.attn
            if isinstance(attn, AdaptiveSpanAttention):
                analytic, executed = attn.attended_entries(T), attn.executed_entries(T)
            else:
                analytic = executed = causal
            layers.append({"analytic_entries": analytic, "executed_entries": executed,
                           "analytic_fraction": analytic / causal, "executed_fraction": executed / causal})
        n = len(layers)
        return {"T": T, "causal_entries": causal, "layers": layers,
                "analytic_fraction": sum(l["analytic_fraction"] for l in layers) / n,
                "executed_fraction": sum(l["executed_fraction"] for l in layers) / n}

    @torch.no_grad()
    def log_metrics(self):
        out = {}
        for i, block in enumerate(self.transformer.h):
            attn = block.attn
            if not isinstance(attn, AdaptiveSpanAttention):
                continue
            z = attn.spans()
            out.update({f"span_mean/{i}": z.mean().item(), f"span_min/{i}": z.min().item(),
                        f"span_max/{i}": z.max().item(), f"reach/{i}": attn.reach()})
            if attn.wave is not None:
                p, r, rho = attn.wave.period(), attn.wave.ratio(), attn.wave.density()
                out.update({f"period_mean/{i}": p.mean().item(), f"period_min/{i}": p.min().item(),
                            f"period_max/{i}": p.max().item(), f"ratio_mean/{i}": r.mean().item(),
                            f"ratio_min/{i}": r.min().item(), f"ratio_max/{i}": r.max().item(),
                            f"density_mean/{i}": rho.mean().item()})
        if out:
            report = self.attention_flops_report()
            for i, layer in enumerate(report["layers"]):
                out[f"attn_flop_fraction/{i}"] = layer["analytic_fraction"]
            out["span_mean"] = sum(m.spans().mean().item() for m in self.span_attentions()) / len(self.span_attentions())
            out["attn_flop_fraction"] = report["analytic_fraction"]
            out["attn_flop_fraction_executed"] = report["executed_fraction"]
        return out

def plot_spans(model, path):
    """Heatmaps of the learned span (and period) of every head in every layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = model.span_attentions()
    if not layers:
        raise ValueError("the model has no adaptive-span layers (use_adaptive_attention=False)")
    with torch.no_grad():
        spans = torch.stack([m.spans() for m in layers]).cpu()
        periods = None if layers[0].wave is None else torch.stack([m.wave.period() for m in layers]).cpu()
    ncols = 1 if periods is None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    for ax, values, title in zip(axes[0], (spans, periods), ("span z (tokens)", "period p")):
        image = ax.imshow(values.numpy(), aspect="auto", cmap="viridis")
        ax.set(title=f"{title} per head", xlabel="head", ylabel="layer",
               xticks=range(values.size(1)), yticks=range(values.size(0)))
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

