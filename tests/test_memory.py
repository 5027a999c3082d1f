"""memory.py: activation checkpointing leaves training bit-identical and saves less; the planner's activation
formula against the bytes a step really saves for backward; its FSDP shards against what fully_shard gives each
rank of a real 2-process gloo run (this file is also that run's worker); the command line."""
import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # also when torchrun runs this file as the FSDP worker

import pytest
import torch

from infra import memory, scaling
import variants
from conftest import run


def build(name, checkpointed=False, **overrides):
    spec = variants.get(name)
    values = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=80, dropout=0.1)
    values.update(overrides)
    config = spec.config_class(**values)
    torch.manual_seed(0)
    model = spec.build(config)
    if checkpointed:
        memory.checkpoint_blocks(model)
    return spec, model


def make_batch(spec, model, step, B=2):
    g = torch.Generator().manual_seed(100 + step)
    T, V = model.config.block_size, min(model.config.vocab_size, 80)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    return spec.objective.prepare(model.config, x, y, generator=torch.Generator().manual_seed(step))


def train_steps(name, checkpointed, steps=3, compile_backend=None, per_block=False, **overrides):
    """[(loss, {name: grad})] of a few AdamW steps, every dropout/noise draw seeded per step."""
    spec, model = build(name, checkpointed, **overrides)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fn = model
    if compile_backend and per_block:  # as torchtitan compiles: block by block
        for block in model.transformer.h:
            block.compile(backend=compile_backend)
    elif compile_backend:
        fn = torch.compile(model, backend=compile_backend)
    out = []
    for step in range(steps):
        batch = make_batch(spec, model, step)
        torch.manual_seed(1000 + step)
        _, loss = spec.objective.step(fn, batch, model)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return out


# --------------------------------------------------------------------------------------------------------------
# activation checkpointing

EQUIVALENCE = {
    "gpt": {}, "llama": {"n_kv_head": 1}, "albert": {}, "parallel": {"bottleneck_method": "concat"},
    "adaptive_span": {"use_triangle_wave_masking": True, "span_init": 8.0},
    "drift_diffusion": {}, "bert": {}, "deberta": {},  # deberta: the EMD runs the last block with a keyword
}


@pytest.mark.parametrize("name", list(EQUIVALENCE))
def test_checkpointing_keeps_training_bit_identical_and_saves_less(name):
    # dropout 0.1 everywhere (and drift-diffusion's noise): the recomputation must draw the same masks
    plain = train_steps(name, False, **EQUIVALENCE[name])
    ckpt = train_steps(name, True, **EQUIVALENCE[name])
    for step, ((loss_a, grads_a), (loss_b, grads_b)) in enumerate(zip(plain, ckpt)):
        assert torch.equal(loss_a, loss_b), (step, loss_a, loss_b)
        assert grads_a.keys() == grads_b.keys()
        for key in grads_a:
            assert torch.equal(grads_a[key], grads_b[key]), (step, key)
    spec, a = build(name, False, **EQUIVALENCE[name])
    _, b = build(name, True, **EQUIVALENCE[name])
    assert a.state_dict().keys() == b.state_dict().keys()
    batch = make_batch(spec, a, 0)
    measured = [memory.saved_bytes(lambda: spec.objective.step(m, batch), exclude=list(m.buffers())) for m in (a, b)]
    assert measured[1] < measured[0] / 2, measured


def test_checkpointing_only_in_training_and_only_once():
    spec, model = build("gpt", True, dropout=0.0)
    _, plain = build("gpt", False, dropout=0.0)
    assert memory.is_checkpointed(model) and not memory.is_checkpointed(plain)
    forwards = [vars(b)["forward"] for b in model.transformer.h]
    memory.checkpoint_blocks(model)  # idempotent
    assert [vars(b)["forward"] for b in model.transformer.h] == forwards
    batch = make_batch(spec, model, 0)
    saved = lambda m: memory.saved_bytes(lambda: spec.objective.step(m, batch))
    assert saved(model) < saved(plain)
    model.eval(), plain.eval()
    assert saved(model) == saved(plain)  # eval mode: plain forwards
    with torch.no_grad():
        assert torch.equal(model(batch.idx), plain(batch.idx))
    assert torch.equal(model.generate(batch.idx[:1, :4], 5, temperature=0), plain.generate(batch.idx[:1, :4], 5,
                                                                                           temperature=0))
    twin = copy.deepcopy(model)  # the copy's forwards run the copy's blocks, not the original's
    assert all(vars(b)["forward"].__self__ is b for b in twin.transformer.h)


def test_batched_parallel_pairs_are_refused():
    _, model = build("parallel", pair_impl="batched")
    with pytest.raises(ValueError, match="pair_impl='batched'"):
        memory.checkpoint_blocks(model)


@pytest.mark.parametrize("per_block", [False, True], ids=["whole_model", "per_block"])
def test_checkpointing_under_torch_compile(per_block):
    # aot_eager traces the model (dynamo + AOTAutograd, the checkpoint as a higher-order op) but runs eager kernels
    # and eager RNG, so the dropout masks stay comparable with the eager run. Equal here today; 1e-6 because a traced
    # graph may order a reduction differently (inductor fuses: its checkpointed grads differ by ~1e-8)
    eager = train_steps("gpt", False, steps=2)
    compiled = train_steps("gpt", True, steps=2, compile_backend="aot_eager", per_block=per_block)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(eager, compiled):
        torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=0)
        for key in grads_a:
            torch.testing.assert_close(grads_b[key], grads_a[key], atol=1e-6, rtol=0, msg=key)


# --------------------------------------------------------------------------------------------------------------
# the planner's activations against the measured saved-for-backward bytes

SHAPES = [  # (variant, model fields, batch, dtype, parallelism, checkpointing)
    ("gpt", dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100), 2, "float32", "ddp", False),
    ("gpt", dict(n_layer=3, n_head=6, n_embd=96, block_size=48, vocab_size=77, bias=False), 3, "float32", "ddp", True),
    ("gpt", dict(n_layer=4, n_head=2, n_embd=32, block_size=64, vocab_size=65), 1, "bfloat16", "fsdp", False),
    ("gpt", dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100), 2, "bfloat16", "ddp", False),
    ("llama", dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100, n_kv_head=2), 2, "float32", "ddp",
     False),
    ("llama", dict(n_layer=3, n_head=4, n_embd=64, block_size=48, vocab_size=90), 1, "float32", "fsdp", True),
    ("llama", dict(n_layer=2, n_head=4, n_embd=96, block_size=32, vocab_size=100, n_kv_head=1), 2, "bfloat16",
     "fsdp", True),
    ("llama", dict(n_layer=2, n_head=4, n_embd=64, block_size=40, vocab_size=100), 2, "bfloat16", "ddp", False),
]


def measured_step_bytes(name, fields, B, dtype, parallelism, checkpointed):
    """saved_bytes of one training forward+loss, in the precision the plan assumes: fp32; DDP's autocast; FSDP's
    mixed precision (16-bit parameters, fp32 buffers, fp32 logits out of the root), emulated in one process by
    casting the parameters and the logits."""
    spec, model = build(name, checkpointed, dropout=0.0, **fields)
    if dtype == "bfloat16" and parallelism == "fsdp":
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
        model.register_forward_hook(lambda module, args, logits: logits.float())
    batch = make_batch(spec, model, 0, B)
    enabled = dtype == "bfloat16" and parallelism == "ddp"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            return spec.objective.step(model, batch)

    return memory.saved_bytes(step, exclude=list(model.buffers())), model


@pytest.mark.parametrize("name,fields,B,dtype,parallelism,checkpointed", SHAPES)
def test_planned_activations_match_saved_bytes(name, fields, B, dtype, parallelism, checkpointed):
    measured, model = measured_step_bytes(name, fields, B, dtype, parallelism, checkpointed)
    p = memory.plan(model.config, name, world_size=1, micro_batch=B, dtype=dtype, parallelism=parallelism,
                    activation_checkpointing=checkpointed)
    planned = p.activations_saved
    if dtype == "bfloat16" and parallelism == "ddp":
        # autocast's 16-bit weight copies are saved too: the plan counts them with the parameters
        planned += p.params - 4 * p.n_params
    ratio = planned / measured
    print(f"{name} {fields} B={B} {dtype} {parallelism} checkpointing={checkpointed}: planned/measured = {ratio:.4f}")
    assert abs(ratio - 1) <= 0.10, (planned, measured)


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_one_recomputed_block_is_what_one_block_saves(name):
    # with checkpointing the backward holds one block's full activations: the plan's peak - saved, measured here
    spec, model = build(name, dropout=0.0, n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=100)
    B, T = 3, 32
    x = torch.randn(B, T, 64, requires_grad=True) * 1.0  # not a leaf: a block input is an activation
    pos = torch.arange(T)
    measured = memory.saved_bytes(lambda: model.transformer.h[0](x, pos), exclude=list(model.buffers()))
    p = memory.plan(model.config, name, micro_batch=B, dtype="float32", parallelism="ddp",
                    activation_checkpointing=True)
    assert p.activations - p.activations_saved == measured


def test_sharding_rule_is_torch_chunk():
    for shape in [(65, 48), (7,), (1, 5), (3, 2, 2), (2, 9)]:
        for world in (1, 2, 3, 4, 8):
            chunks = list(torch.empty(shape).chunk(world, dim=0))
            chunks += [torch.empty(0)] * (world - len(chunks))
            assert [memory.shard_numel(shape, world, r) for r in range(world)] == [c.numel() for c in chunks]


# --------------------------------------------------------------------------------------------------------------
# FSDP2 under torchrun: sharded bytes counted on each rank; checkpointing identical under FSDP

FSDP_CASES = {  # odd widths and vocabularies, so that dim 0 does not split evenly over 2 ranks
    "gpt": dict(n_layer=2, n_head=3, n_embd=48, block_size=16, vocab_size=65, dropout=0.1),
    "llama": dict(n_layer=2, n_head=4, n_embd=48, block_size=16, vocab_size=67, n_kv_head=1, dropout=0.1),
    "albert": dict(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=71, embedding_size=24, dropout=0.1),
}


def fsdp_worker(out_dir):
    """One rank: for each case, two models (plain and checkpointed; for gpt also checkpointed and compiled block by
    block), each block fully_shard-ed and then the root, two AdamW steps on rank-dependent batches; writes the local
    bytes of parameters (and of their padded storages), gradients and optimizer state, the losses, and whether
    checkpointing changed anything."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    local = lambda t: (t.to_local() if isinstance(t, DTensor) else t)
    nbytes = lambda ts: sum(local(t).numel() * local(t).element_size() for t in ts)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report = {}
    for name, fields in FSDP_CASES.items():
        runs = {}
        # gpt once more as torchtitan composes them: checkpointing, then each block compiled, then fully_shard
        for checkpointed, compiled in [(False, False), (True, False)] + [(True, True)] * (name == "gpt"):
            spec, model = build(name, checkpointed, **fields)
            for block in model.transformer.h:
                if compiled:
                    block.compile(backend="aot_eager")
                fully_shard(block)
            fully_shard(model)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            losses = []
            for step in range(2):
                batch = make_batch(spec, model, 10 * step + rank)
                torch.manual_seed(1000 + 10 * step + rank)
                _, loss = spec.objective.step(model, batch)
                loss.backward()
                grads = nbytes(p.grad for p in model.parameters())
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
            state = [v for s in opt.state.values() for v in s.values()]
            storages = {local(p).untyped_storage().data_ptr(): local(p).untyped_storage().nbytes()
                        for p in model.parameters()}
            runs[checkpointed, compiled] = {"params": nbytes(model.parameters()), "grads": grads,
                                            "allocated": sum(storages.values()),
                                            "optim": nbytes(state), "losses": losses,
                                            "full": [p.full_tensor() for p in model.parameters()]}
        plain, ckpt = runs[False, False], runs[True, False]
        report[name] = {**{k: v for k, v in plain.items() if k != "full"},
                        "checkpointed_losses": ckpt["losses"],
                        "checkpointed_same_params": all(map(torch.equal, plain["full"], ckpt["full"])),
                        "checkpointed_bytes": [ckpt[k] for k in ("params", "grads", "optim")],
                        "compiled_losses": runs.get((True, True), plain)["losses"]}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    scaling.exit_rank()


def test_fsdp_shards_equal_the_plan_and_checkpointing_is_identical_under_fsdp(tmp_path):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
         str(tmp_path)], env={"OMP_NUM_THREADS": "1"}, timeout=300)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, fields in FSDP_CASES.items():
        spec = variants.get(name)
        shapes = memory.model_shapes(spec.config_class(**fields), name)
        _, _, _, shards = memory.state_bytes(shapes, "fsdp", 2, memory.FP32)
        for rank, report in enumerate(reports):
            got = report[name]
            for kind in ("params", "grads", "optim"):
                assert got[kind] == shards[kind][rank], (name, rank, kind, got[kind], shards[kind][rank])
            # every rank allocates full chunks (padding included): rank 0's share, what the plan charges per rank
            assert got["allocated"] == shards["params"][0]
            assert got["checkpointed_bytes"] == [got["params"], got["grads"], got["optim"]]
            assert got["checkpointed_losses"] == got["losses"], name
            assert got["checkpointed_same_params"], name
            assert got["compiled_losses"] == got["losses"], name
        assert reports[0][name]["losses"] != reports[1][name]["losses"]  # the ranks really saw different batches
        # the uneven split is exercised: rank 0 holds more than rank 1
        assert shards["params"][0] > shards["params"][1]


# --------------------------------------------------------------------------------------------------------------
# the command line

def test_cli_llama_7b():
    proc = run(["bench.py", "plan", "--config=config/llama_7b.py", "--world_size=8", "--gpu_gb=80"])
    lines = proc.stdout.splitlines()
    assert "6.738B parameters, block 2048" in lines[0]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in lines if line.startswith("| ddp") or line.startswith("| fsdp")}
    assert set(rows) == {("ddp", "off"), ("ddp", "on"), ("fsdp", "off"), ("fsdp", "on")}
    # fp32 weights + two gradient copies + two moments of 6.74B parameters: far past 80 GiB on every rank
    assert float(rows[("ddp", "on")][4]) > 100 and rows[("ddp", "on")][5] == "0"
    # sharded over 8: 16 bytes per parameter / 8 = 12.6 GiB; checkpointing lets several sequences fit
    fsdp = rows[("fsdp", "on")]
    assert 12 < float(fsdp[0]) + float(fsdp[1]) + float(fsdp[2]) < 25 and int(fsdp[5]) >= 4
    assert int(rows[("fsdp", "off")][5]) < int(fsdp[5])


def test_cli_presets_and_bad_input():
    proc = run(["bench.py", "plan", "--presets"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| llama") or line.startswith("| gpt2")}
    assert set(rows) == {"llama_7b", "llama_13b", "llama_33b", "llama_65b", "gpt2 (124M)", "gpt2-medium (350M)",
                         "gpt2-large (774M)", "gpt2-xl (1558M)"}
    gpus = [int(rows[k][2]) for k in ("llama_7b", "llama_13b", "llama_33b", "llama_65b")]
    assert gpus == sorted(gpus) and gpus[0] >= 2  # 7B's 16 bytes per parameter alone exceed one 80 GiB GPU
    assert rows["gpt2 (124M)"][2] == "1" and rows["gpt2 (124M)"][5] == "yes"
    for bad in (["--presets", "--parallelism=zero"], ["config/llama_7b.py", "--world_sise=8"], ["--gpu_gb=80"]):
        proc = run(["bench.py", "plan", *bad], check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, bad


if __name__ == "__main__":
    fsdp_worker(sys.argv[1])
