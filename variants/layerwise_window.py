"""Layer-wise causal sliding windows (docs/layerwise.md).

Layer l lets query i attend key j iff max(0, i - w_l + 1) <= j <= i (w = 1 is self only; w >= T is plain causal).
The per-layer windows w_l come from one of (see `layer_windows`):

  schedule = "full" | "half" | "quarter" | "aggressive"   docs/layerwise.md §1 presets (geometric halving)
  schedule = "progressive" + start_layer/start_window/end_window, or the JSON form as a string:
             schedule = '{"type": "progressive", "start_layer": 6, "start_window": 512, "end_window": 16}'
  windows = [0, 0, 256, 128, ...]                         explicit, one per layer, 0 = full causal
  window_pattern = "SSSL" | "L,256,64"                    repeating long/short pattern (modded-nanogpt/nanochat style)

Compute is real, not only a mask: each layer hands the kernel AttnMask(window=w), which attention.py's banded SDPA
path turns into O(T*w) work on CPU; on CUDA, FlexAttention with a sliding-window block mask (attention.py builds it
once per window and length, shared by every layer with that window). generate() keeps a rolling cache of the last w-1
keys per windowed layer.
Fine-tuning GPT-2 with windows: `python train.py config/finetune_gpt2_layerwise.py` (init_from="gpt2" plus the window
fields, which train.py applies on top of the pretrained weights).
"""
import json
import math
from dataclasses import dataclass

from attention import AttnMask, RollingKVCache, auto_attention, sdpa_attention
from model import GPT, CausalSelfAttention, GPTConfig
from variants.registry import register

# docs/layerwise.md §1, written for 12 layers: (start_layer, start_window, end_window); layers before start_layer are full.
PRESETS = {"half": (6, 512, 16), "quarter": (3, 1024, 4), "aggressive": (1, 1024, 1)}
PRESET_LAYERS = 12


def progressive_windows(n_layer, start_layer, start_window, end_window, first_window_is_start=False):
    """Geometric halving: full below start_layer, then max(end, start // 2^(l - start_layer + 1)) (docs/layerwise.md §1's
    table: the first masked layer already gets start/2), or start // 2^(l - start_layer) with first_window_is_start
    (docs/layerwise.md §1's prose)."""
    shift = 0 if first_window_is_start else 1
    return [None if l < start_layer else max(end_window, start_window // 2 ** (l - start_layer + shift))
            for l in range(n_layer)]


def pattern_windows(pattern, n_layer, short_window, long_window):
    """Tile a pattern over the layers. Tokens are single letters ("SSSL") or comma-separated ("L,256,S"):
    L or F = long (long_window, 0 = full causal), S = short_window, an integer = that window."""
    tokens = [t.strip() for t in pattern.split(",")] if "," in pattern else list(pattern.replace(" ", ""))
    out = []
    for t in tokens:
        if t.upper() in ("L", "F"):
            out.append(long_window or None)
        elif t.upper() == "S":
            out.append(short_window)
        elif t.isdigit() and int(t) >= 0:
            out.append(int(t) or None)
        else:
            raise ValueError(f"window_pattern token {t!r} is not L, F, S or a window size (pattern {pattern!r})")
    if not out:
        raise ValueError("window_pattern is empty")
    return [out[l % len(out)] for l in range(n_layer)]


@dataclass
class LayerwiseConfig(GPTConfig):
    schedule: str = "full"  # full | half | quarter | aggressive | progressive | a JSON object (see module doc)
    start_layer: int = 0  # schedule="progressive" only (the JSON form's fields), used as given for any depth
    start_window: int = 1024  # schedule="progressive": window the halving starts from
    end_window: int = 1  # schedule="progressive": smallest window
    first_window_is_start: bool = False  # presets/progressive: first masked layer gets start_window, not start/2
    windows: list[int] | None = None  # explicit per-layer windows, 0 = full causal; overrides schedule
    window_pattern: str = ""  # repeating pattern, e.g. "SSSL"; overrides schedule
    short_window: int = 0  # window of S in window_pattern; 0 = block_size // 2
    long_window: int = 0  # window of L in window_pattern; 0 = full causal
    attn_block: int = 0  # query block of the banded CPU path; 0 = automatic (model.band_block)
    flex_attention: bool = True  # CUDA, attn_impl="auto": windows through FlexAttention (False: the banded SDPA kernel)

    def validate(self):
        super().validate()
        if sum(bool(x) for x in (self.windows, self.window_pattern, self.schedule != "full")) > 1:
            raise ValueError("set only one of schedule (non-'full'), windows and window_pattern")
        for name in ("start_layer", "short_window", "long_window", "attn_block"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.start_window < 1 or self.end_window < 1:
            raise ValueError(f"start_window and end_window must be >= 1, got {self.start_window}, {self.end_window}")
        windows = layer_windows(self)  # raises on bad schedules, lists and patterns
        if len(windows) != self.n_layer:
            raise ValueError(f"windows lists {len(windows)} layers but n_layer={self.n_layer}")


def layer_windows(config):
    """Per-layer windows (None = full causal) for a LayerwiseConfig."""
    n = config.n_layer
    if config.windows:
        if any((not isinstance(w, int)) or w < 0 for w in config.windows):
            raise ValueError(f"windows must be integers >= 0 (0 = full causal), got {config.windows}")
        return [w or None for w in config.windows]
    if config.window_pattern:
        return pattern_windows(config.window_pattern, n, config.short_window or max(1, config.block_size // 2),
                               config.long_window)
    schedule = config.schedule.strip()
    if schedule.startswith("{"):
        return json_windows(schedule, n, config.first_window_is_start)
    if schedule == "full":
        return [None] * n
    if schedule == "progressive":
        return progressive_windows(n, config.start_layer, config.start_window, config.end_window,
                                   config.first_window_is_start)
    if schedule in PRESETS:
        start_layer, start_window, end_window = PRESETS[schedule]
        # other depths keep the same fraction of full layers at the bottom; 12 layers give the table of docs/layerwise.md §1 exactly
        start_layer = math.ceil(start_layer * n / PRESET_LAYERS)
        return progressive_windows(n, start_layer, start_window, end_window, config.first_window_is_start)
    raise ValueError(f"unknown schedule {config.schedule!r}: use full, half, quarter, aggressive, progressive, "
                     f"or a JSON object such as '{{\"type\": \"progressive\", \"start_layer\": 6, ...}}'")


def json_windows(text, n_layer, first_window_is_start):
    """The JSON form {type: progressive, start_layer, start_window, end_window}, or {windows: [...]}."""
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise ValueError(f"schedule looks like JSON but does not parse: {e}") from None
    if "windows" in spec:
        ws = spec["windows"]
        if not isinstance(ws, list) or any(w is not None and (not isinstance(w, int) or w < 0) for w in ws):
            raise ValueError(f"schedule JSON windows must be a list of integers >= 0 or null, got {ws!r}")
        if len(ws) != n_layer:
            raise ValueError(f"schedule JSON lists {len(ws)} windows but n_layer={n_layer}")
        return [w or None for w in ws]
    if spec.get("type", "progressive") != "progressive":
        raise ValueError(f"schedule JSON type must be 'progressive', got {spec.get('type')!r}")
    missing = [k for k in ("start_layer", "start_window", "end_window") if k not in spec]
    if missing:
        raise ValueError(f"schedule JSON lacks {', '.join(missing)}")
    return progressive_windows(n_layer, int(spec["start_layer"]), int(spec["start_window"]), int(spec["end_window"]),
                               first_window_is_start)


class WindowedAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.window = layer_windows(config)[layer_idx]
        self.block = config.attn_block  # 0: attention.band_block picks it from the window
        self.flex = config.flex_attention

    def mask(self, Tq, Tk, q_offset):
        # the farthest pair is the last query and key 0 (keys are numbered from the first key handed in)
        if self.window is None or self.window > q_offset + Tq - 1:
            return AttnMask(causal=True, q_offset=q_offset)
        return AttnMask(causal=True, window=self.window, q_offset=q_offset, block=self.block)

    def attend(self, q, k, v, mask):
        """attn_impl's kernel; with flex_attention=False, auto keeps windows on the banded SDPA kernel on CUDA too."""
        if self.flex or self.kernel is not auto_attention:
            return super().attend(q, k, v, mask)
        return sdpa_attention(q, k, v, mask, self.dropout if self.training else 0.0)

    def make_cache(self, batch_size, device, dtype):
        if self.window is not None and self.window < self.block_size:
            return RollingKVCache(self.window - 1)  # the next query reaches back window-1 keys
        return super().make_cache(batch_size, device, dtype)

    def attended_entries(self, T):
        w = self.window
        if w is None or w >= T:
            return T * (T + 1) // 2
        return w * (w + 1) // 2 + (T - w) * w  # queries i < w see i + 1 keys, the rest see w

    def extra_repr(self):
        return f"window={self.window or 'full'}, block={self.block}"


@register("layerwise")
class LayerwiseGPT(GPT):
    config_class = LayerwiseConfig
    Attention = WindowedAttention

    def log_metrics(self):
        T = self.config.block_size
        attended = sum(b.attn.attended_entries(T) for b in self.transformer.h)
        return {"attended_fraction_of_causal": attended / (len(self.transformer.h) * T * (T + 1) / 2)}
