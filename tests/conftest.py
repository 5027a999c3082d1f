"""Shared test setup: the repo on sys.path, tiktoken pointed at ../shared/tiktoken_cache, small real datasets."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
torch.set_num_threads(min(2, torch.get_num_threads()))


def assert_same_outputs_and_grads(a, b, atol=1e-5, rtol=1e-4):
    """a, b: (output, gradients) of one computation by two paths (fast kernel vs dense reference); gradients are a
    list, or a {parameter name: gradient} dict whose names must agree."""
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=rtol)
    if isinstance(a[1], dict):
        assert a[1].keys() == b[1].keys()
        pairs = [(a[1][name], b[1][name], name) for name in a[1]]
    else:
        pairs = [(x, y, None) for x, y in zip(a[1], b[1], strict=True)]
    for x, y, name in pairs:
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=name)


def assert_cached_greedy_equals_uncached(model, idx, new):
    """Greedy generate() with the KV cache gives exactly the tokens of nanoGPT-style uncached decoding."""
    cached = model.generate(idx, new, temperature=0, use_cache=True)
    assert cached.shape == (idx.size(0), idx.size(1) + new)
    assert torch.equal(cached, model.generate(idx, new, temperature=0, use_cache=False))


def embedding_grad(model, t, pick=None, row=None, **inputs):
    """|d logits[:, t] / d token embeddings| per input position (max over batch and channels), from model(**inputs);
    pick selects the logits of a model that returns several (an encoder's "mlm"), row one sequence of the batch."""
    grabbed = {}

    def keep(module, args, output):
        output.retain_grad()
        grabbed["emb"] = output

    handle = model.transformer.wte.register_forward_hook(keep)
    try:
        logits = model(**inputs)
    finally:
        handle.remove()
    rows = slice(None) if row is None else slice(row, row + 1)
    (logits if pick is None else logits[pick])[rows, t].pow(2).sum().backward()
    return grabbed["emb"].grad[rows].abs().amax(dim=(0, 2))


def future_gradient(model, idx, t):
    """Max |d logits[:, t] / d token embedding| over tokens after t, and over tokens up to t."""
    g = embedding_grad(model, t, idx=idx)
    return g[t + 1:].max().item(), g[:t + 1].max().item()


@pytest.fixture
def sdpa_calls(monkeypatch):
    """(q shape, k shape) of every F.scaled_dot_product_attention call made while the test runs."""
    seen, real = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def need_shared(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared beside the repo holds the real test data)")
    return path


def run(args, cwd=REPO, timeout=600, env=None, check=True):
    """Run a project command as a user would (python from this interpreter), returning the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, *args] if args[0].endswith(".py") else args, cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory):
    """tiny Shakespeare prepared by the real prepare script into a temp dir."""
    src = need_shared("data", "shakespeare", "input.txt")
    out = tmp_path_factory.mktemp("shakespeare_char")
    run(["data/shakespeare_char/prepare.py", "--source", str(src), "--out_dir", str(out)])
    return out
