"""
Attention analysis for any variant's checkpoint (docs/layerwise.md §4), from the dense reference path:

    python tools/analysis.py --ckpt=out-x/ckpt.pt --data_dir=/tmp/ts
    python tools/analysis.py --ckpt=out-full/ckpt.pt,out-aggressive/ckpt.pt --labels=full,aggressive --out_dir=/tmp/an

Per layer and per head, over a batch of eval sequences: attention entropy H = -sum_j a_ij log(a_ij + 1e-10) averaged
over queries i; the fraction of attention weights below 0.01 (over the pairs the mask allows, and over all T^2);
the mean attention distance sum_j a_ij (i - j); the entropy uniform attention over the allowed keys would have
(mean_i log #allowed_i), for reference. Per layer, from the mask: attended pairs, sparsity against T^2 and
against the causal triangle T(T+1)/2, the average attended span (allowed keys per query) and T^2 / attended
("memory reduction"); overall = sum over layers. Writes analysis.json, analysis.md, entropy.png (per-layer entropy,
one curve per checkpoint) and heatmaps/<label>_layer<l>.png (head-averaged weights of the first sequence, cropped)
to --out_dir, by default <directory of the first checkpoint>/analysis, whatever the working directory. Progress over
the checkpoints goes to stderr, only when stderr is a terminal.

How the weights are obtained, for every variant alike: during one forward pass of the objective's batch, every
attention call's kernel is the dense reference, which returns the probabilities (with the call's real q, k, v, mask
and scale), in call order.
"""
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for python tools/<name>.py
from infra import checkpoint, configurator, loader, markdown, runtime
import variants
from attention import dense_attention
from data.common import DataError, open_split
from infra.flops import attention_modules


@dataclass
class AnalysisConfig:
    ckpt: str = ""  # checkpoint path(s), comma-separated; a directory means <dir>/ckpt.pt
    labels: str = ""  # comma-separated labels (default: the checkpoint's parent directory names)
    data_dir: str = ""  # default: the data_dir the checkpoint was trained with
    split: str = "val"
    batch_size: int = 4  # eval sequences
    seq_len: int = 0  # 0 = the model's block_size
    crop: int = 128  # heatmaps show the first crop x crop queries/keys (128 x 128 crops, as docs/layerwise.md §4)
    out_dir: str = ""  # default: <directory of the first checkpoint>/analysis
    device: str = "cpu"  # auto, cpu, cuda or cuda:<index>
    seed: int = 0


def attention_calls(model, run):
    """Run run() (a forward pass) with every attention call on the dense reference kernel, and return
    [(probabilities (B, H, Tq, Tk), the call's AttnMask)] in call order."""
    calls, modules = [], attention_modules(model)

    def recording(q, k, v, mask, dropout_p=0.0, scale=None):
        y, weights = dense_attention(q, k, v, mask, dropout_p, scale, return_weights=True)
        calls.append((weights, mask))
        return y

    kernels = [m.kernel for m in modules]
    try:
        for m in modules:
            m.kernel = recording
        with torch.no_grad():
            run()
    finally:
        for m, kernel in zip(modules, kernels):
            m.kernel = kernel
    return calls


def allowed_pairs(mask, Tq, Tk, device):
    """Bool (Tq, Tk) of the pairs a mask allows."""
    keep = mask.dense_allowed(Tq, Tk, device)
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device) if keep is None else keep


def layer_stats(weights, keep):
    """weights (B, H, T, T) probabilities, keep (T, T) allowed pairs -> per-head and mask statistics."""
    B, H, Tq, Tk = weights.shape
    w = weights.float()
    entropy = -(w * torch.log(w + 1e-10)).sum(-1)  # (B, H, Tq)
    n_allowed = keep.sum().item()
    small = (w < 0.01)
    dist = (torch.arange(Tq)[:, None] - torch.arange(Tk)[None, :]).to(w)  # i - j
    causal_pairs = Tq * (Tq + 1) // 2 if Tq == Tk else keep.numel()
    return {
        "entropy_per_head": entropy.mean(dim=(0, 2)).tolist(),
        "below_0.01_allowed_per_head": ((small & keep).sum(dim=(0, 2, 3)).float() / (B * n_allowed)).tolist(),
        "below_0.01_all_per_head": (small.sum(dim=(0, 2, 3)).float() / (B * Tq * Tk)).tolist(),
        "mean_distance_per_head": (w * dist).sum(-1).mean(dim=(0, 2)).tolist(),
        # uniform attention over the allowed keys: the most entropy the mask permits (learned focus shows below it)
        "max_entropy": torch.log(keep.sum(-1).clamp(min=1).float()).mean().item(),
        "attended": n_allowed, "total": Tq * Tk, "causal_total": causal_pairs,
        "sparsity_vs_T2": 1 - n_allowed / (Tq * Tk),
        "sparsity_vs_causal": 1 - n_allowed / causal_pairs,
        "avg_span": n_allowed / Tq,
        "memory_reduction": Tq * Tk / n_allowed,
    }


def analyse(model, run, crop=0):
    """Per-layer statistics (list of dicts, in call order) and cropped head-averaged weights of sequence 0, from
    the attention calls of the forward pass run()."""
    model.eval()
    layers, maps = [], []
    for weights, mask in attention_calls(model, run):
        keep = allowed_pairs(mask, weights.size(-2), weights.size(-1), weights.device).cpu()
        stats = layer_stats(weights.cpu(), keep)
        stats["entropy"] = float(np.mean(stats["entropy_per_head"]))
        stats["below_0.01_allowed"] = float(np.mean(stats["below_0.01_allowed_per_head"]))
        stats["below_0.01_all"] = float(np.mean(stats["below_0.01_all_per_head"]))
        stats["mean_distance"] = float(np.mean(stats["mean_distance_per_head"]))
        stats["reach"] = mask.reach()  # farthest distance the mask lets a query see (+1), None = unlimited
        layers.append(stats)
        if crop:
            maps.append(weights[0].float().mean(0)[:crop, :crop].cpu().numpy())
    overall = {"attended": sum(s["attended"] for s in layers), "total": sum(s["total"] for s in layers),
               "causal_total": sum(s["causal_total"] for s in layers)}
    overall.update(sparsity_vs_T2=1 - overall["attended"] / overall["total"],
                   sparsity_vs_causal=1 - overall["attended"] / overall["causal_total"],
                   memory_reduction=overall["total"] / overall["attended"])
    return {"layers": layers, "overall": overall}, maps


def eval_batch(data_dir, split, meta, batch_size, T, seed):
    """batch_size random length-T windows of a split (fixed by seed), as (x, y) int64 tensors."""
    data = open_split(data_dir, split, meta)
    if len(data) <= T:
        raise DataError(f"{data_dir}/{split}.bin has {len(data)} tokens, fewer than seq_len+1 = {T + 1}")
    g = torch.Generator().manual_seed(seed)
    ix = torch.randint(len(data) - T, (batch_size,), generator=g).tolist()
    x = torch.from_numpy(np.stack([data[i:i + T] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i + 1:i + 1 + T] for i in ix]).astype(np.int64))
    return x, y


def plot_entropy(reports, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, rep in reports.items():
        layers = rep["layers"]
        ls = range(len(layers))
        line, = axes[0].plot(ls, [s["entropy"] for s in layers], marker="o", label=label)
        axes[0].plot(ls, [s["max_entropy"] for s in layers], linestyle="--", color=line.get_color(), alpha=0.6,
                     label=f"{label}: uniform over the mask")
        axes[1].plot(ls, [s["mean_distance"] for s in layers], marker="o", label=label)
    axes[0].set(xlabel="layer", ylabel="entropy (nats)", title="attention entropy per layer (mean over heads, "
                "queries, sequences)")
    axes[1].set(xlabel="layer", ylabel="mean attention distance (tokens)", yscale="symlog",
                title="how far back attention looks")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmap(weights, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.2, 4))
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6))
    ax.set(title=title, xlabel="key j", ylabel="query i")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_table(reports):
    head = ["checkpoint", "layer", "entropy (uniform over mask)", "weights < 0.01 (allowed / all)", "mean distance",
            "avg span", "sparsity vs T^2 / causal", "T^2 / attended"]
    rows = []
    for label, rep in reports.items():
        for l, s in enumerate(rep["layers"]):
            rows.append([label, l, f"{s['entropy']:.3f} ({s['max_entropy']:.3f})",
                         f"{s['below_0.01_allowed']:.3f} / {s['below_0.01_all']:.3f}", f"{s['mean_distance']:.1f}",
                         f"{s['avg_span']:.1f}", f"{s['sparsity_vs_T2']:.3f} / {s['sparsity_vs_causal']:.3f}",
                         f"{s['memory_reduction']:.2f}"])
        o = rep["overall"]
        rows.append([label, "all", "", "", "", "", f"{o['sparsity_vs_T2']:.3f} / {o['sparsity_vs_causal']:.3f}",
                     f"{o['memory_reduction']:.2f}"])
    return markdown.table(head, rows)


def default_out_dir(paths):
    """Where the outputs go without --out_dir: beside the first checkpoint, in <its directory>/analysis."""
    return Path(paths[0]).parent / "analysis"


def load(paths, cfg):
    """[(checkpoint, model, objective, (x, y) eval batch)] for each checkpoint path."""
    loaded = []
    for path in tqdm(paths, desc="loading", unit="ckpt", disable=None, leave=False):
        opened = loader.open_model(path, variants.get, cfg.data_dir)
        model = opened.model
        T = cfg.seq_len or model.config.block_size
        if T > model.config.block_size:
            raise configurator.ConfigError(f"seq_len={T} exceeds the model's block_size {model.config.block_size}")
        xy = eval_batch(opened.data_dir, cfg.split, opened.meta, cfg.batch_size, T, cfg.seed)
        loaded.append((opened.ckpt, model, opened.objective, xy))
    return loaded


def run(paths, labels, cfg, command):
    """Analyse each checkpoint on its eval batch; write analysis.json/.md, entropy.png and heatmaps to cfg.out_dir
    (empty: default_out_dir(paths)). Every checkpoint loads and gets its batch before anything is written."""
    loaded = load(paths, cfg)
    cfg = replace(cfg, out_dir=cfg.out_dir or str(default_out_dir(paths)))  # analysis.json records where it went
    out = Path(cfg.out_dir)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    reports = {}
    for label, (ckpt, model, objective, (x, y)) in tqdm(list(zip(labels, loaded)), desc="analysis", unit="ckpt",
                                                        disable=None, leave=False):
        model.to(device)
        batch = objective.prepare(model.config, x.to(device), y.to(device),
                                  generator=torch.Generator().manual_seed(cfg.seed))
        rep, maps = analyse(model, lambda: objective.logits(model, batch), crop=cfg.crop)
        rep.update(variant=ckpt["variant"], T=batch.idx.size(1), sequences=batch.idx.size(0))
        reports[label] = rep
        for l, w in enumerate(maps):
            plot_heatmap(w, f"{label} layer {l} (head mean)", out / "heatmaps" / f"{label}_layer{l}.png")
        tqdm.write(f"{label}: entropy per layer " + " ".join(f"{s['entropy']:.2f}" for s in rep["layers"]),
                   file=sys.stdout)
    plot_entropy(reports, out / "entropy.png")
    table = report_table(reports)
    (out / "analysis.json").write_text(json.dumps({"config": asdict(cfg), "reports": reports}, indent=1) + "\n")
    (out / "analysis.md").write_text(f"`{command}`\n\n{table}\n")
    print(table)
    print(f"wrote {out / 'analysis.json'}, {out / 'analysis.md'}, {out / 'entropy.png'}, {out / 'heatmaps'}/")


def main(argv):
    try:
        cfg, _, _ = configurator.resolve(argv, AnalysisConfig)
        paths = [Path(p) for p in cfg.ckpt.split(",") if p]
        if not paths:
            raise configurator.ConfigError("give --ckpt=PATH[,PATH...] (a checkpoint file or its out_dir)")
        paths = [loader.locate(p) for p in paths]  # a run's directory means its ckpt.pt (or sharded folder)
        labels = cfg.labels.split(",") if cfg.labels else [p.resolve().parent.name for p in paths]
        if len(labels) != len(paths) or len(set(labels)) != len(labels):
            raise configurator.ConfigError(f"need one distinct label per checkpoint, got {labels}")
        if cfg.batch_size < 1 or cfg.seq_len < 0 or cfg.crop < 0:
            raise configurator.ConfigError("batch_size must be >= 1, seq_len and crop >= 0")
        device, _ = runtime.resolve(cfg.device)
        cfg = replace(cfg, device=str(device))
        runtime.check_output_dir(cfg.out_dir or default_out_dir(paths))  # before the checkpoints load, not after
        run(paths, labels, cfg, "python tools/analysis.py " + " ".join(argv))
    except (configurator.ConfigError, checkpoint.CheckpointError, DataError, ValueError) as e:
        runtime.fail(e, 1 if isinstance(e, (checkpoint.CheckpointError, DataError, runtime.Unavailable)) else 2)


if __name__ == "__main__":
    main(sys.argv[1:])
