"""
Memory past one GPU: activation checkpointing of every block, an exact count of the bytes a training step saves for
backward, and a planner of per-rank bytes under DDP and FSDP2, with and without checkpointing:

    python memory.py config/llama_7b.py --world_size=8 --gpu_gb=80
    python memory.py --config=config/llama_7b.py --world_size=8 --parallelism=fsdp --activation_checkpointing
    python memory.py --presets            # how many 80 GiB GPUs each LLaMA preset and GPT-2 size needs (FSDP)

checkpoint_blocks(model)  recompute every block's forward in the backward (non-reentrant torch.utils.checkpoint)
saved_bytes(fn)           bytes a training forward saves for backward, measured (deduplicated by storage)
plan(...)                 per-rank bytes of parameters, gradients, optimizer state and activations, and the largest
                          micro-batch that fits; parameter counts from the model built on the meta device

The activation formula is read off the code of gpt and llama (model.py, variants/llama.py) tensor by tensor and
checked against saved_bytes (tests/test_memory.py); the sharded terms are what fully_shard gives each rank.
"""
import dataclasses
import math
import types
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import variants

GiB = 2 ** 30


# --------------------------------------------------------------------------------------------------------------
# activation checkpointing

def _checkpointed_forward(block, *args, **kwargs):
    # the class's own forward: fully_shard swaps the block's class for a subclass that keeps it, and recomputing
    # through the class (not __call__) leaves FSDP's hooks to the outer call, which already gathered the parameters
    forward = type(block).forward
    if block.training and torch.is_grad_enabled():
        # preserve_rng_state: the recomputation draws the same dropout masks and diffusion noise as the forward did
        return checkpoint(forward, block, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
    return forward(block, *args, **kwargs)


def checkpoint_blocks(model):
    """Recompute each block's activations in the backward instead of keeping them: every module of
    model.transformer.h gets an instance-level forward that runs its class's forward under non-reentrant
    torch.utils.checkpoint in training (module.training and grad enabled), and plainly otherwise. No module is
    wrapped or added, so state_dict keys stay, and fully_shard and torch.compile applied afterwards (torchtitan's
    order: checkpointing, compile per block, shard) see the same blocks.
    Idempotent; returns the model. A shared block (ALBERT) is recomputed once per call, a pair (parallel) block by
    block. Raises ValueError for a model whose blocks are not called through their forward (parallel's batched
    pairs), where nothing would be recomputed."""
    if not getattr(model, "calls_blocks", True):
        raise ValueError("this model computes its blocks outside their forward (pair_impl='batched'), so checkpointing "
                         "them would recompute nothing; use pair_impl='sequential' with activation_checkpointing")
    for block in model.transformer.h:
        if "forward" not in vars(block):
            # a bound method, not a closure: deepcopy rebinds it to the copied block
            block.forward = types.MethodType(_checkpointed_forward, block)
    return model


def is_checkpointed(model):
    return all("forward" in vars(block) for block in model.transformer.h)


# --------------------------------------------------------------------------------------------------------------
# measurement

def saved_bytes(fn, exclude=()):
    """Bytes the autograd graph of fn() (a training forward and loss) saves for backward, measured by a
    saved_tensors_hooks pack hook: each saved tensor's storage counted once (views of one storage, such as q, k, v
    split from one projection, are one allocation), parameters not counted (they are not activations): any leaf
    that requires grad or a view of one, and the storages of `exclude` (e.g. model.buffers()). Tensors saved inside
    a checkpointed region are not saved (the checkpoint keeps only the region's inputs), so they are not counted."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen, kept = set(), []
    total = 0

    def pack(t):
        nonlocal total
        base = t if t._base is None else t._base
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if not (base.is_leaf and base.requires_grad) and storage.data_ptr() not in skip and key not in seen:
            seen.add(key)
            total += storage.nbytes()
        kept.append(t)  # alive until we return: no other saved tensor can reuse its address meanwhile
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    kept.clear()
    return total


# --------------------------------------------------------------------------------------------------------------
# the model's parameters, from the meta device

@dataclass(frozen=True)
class Shapes:
    """Parameter shapes of a model, grouped as FSDP units: the root's own (embeddings, final norm, head) and each
    block's. Shared parameters (tied embeddings) are listed once."""
    root: tuple
    blocks: tuple  # one tuple of shapes per module of transformer.h (none when one block is shared by all layers)
    linear_weights: int  # elements of every nn.Linear weight: autocast keeps a bf16 copy of each for the backward

    def all(self):
        return self.root + tuple(s for block in self.blocks for s in block)


def numel(shape):
    return math.prod(shape)


_SHAPES = {}  # (variant, repr(config)) -> Shapes: a preset is planned at many world sizes


def model_shapes(config, variant):
    """Shapes of the model `variant` builds from `config` (a dataclass of its config_class), on the meta device."""
    key = (variant, repr(config))
    if key not in _SHAPES:
        _SHAPES[key] = _shapes(variant, config)
    return _SHAPES[key]


def _shapes(variant, config):
    spec = variants.get(variant)
    with torch.device("meta"):  # nothing allocated: a 65B model costs only its module objects
        model = spec.build(config)
    seen = set()

    def take(params):
        out = []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(tuple(p.shape))
        return tuple(out)

    # a block applied several times (ALBERT's shared one) stays in the root unit, as scaling.shard_model keeps it
    shared = len(model.transformer.h) < config.n_layer
    blocks = () if shared else tuple(take(block.parameters()) for block in model.transformer.h)
    root = take(model.parameters())
    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    return Shapes(root, blocks, sum(linear.values()))


def shard_numel(shape, world_size, rank):
    """Elements of a parameter that fully_shard leaves on `rank`: dim 0 cut into chunks of ceil(dim0 / world),
    as torch.chunk cuts it; the last ranks get fewer rows or none (their storage is padded to a full chunk)."""
    if not shape:
        return 1 if rank == 0 else 0
    chunk = -(-shape[0] // world_size)
    rows = max(0, min(chunk, shape[0] - rank * chunk))
    return rows * numel(shape[1:])


def padded_shard_numel(shape, world_size):
    """Elements each rank allocates for a parameter's shard (a full chunk, padding included): rank 0's share."""
    return shard_numel(shape, world_size, 0)


# --------------------------------------------------------------------------------------------------------------
# activations: what one training forward saves for backward, per token and per micro-batch

PLANNED_VARIANTS = ("gpt", "llama")


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of saved tensor in a precision regime."""
    compute: int  # matmul inputs and outputs, attention, MLP
    residual: int  # the residual stream (block inputs) and LayerNorm statistics
    loss: int  # log_softmax of the logits
    name: str


FP32 = Precision(4, 4, 4, "float32")
# DDP under autocast: matmuls in 16 bits, the residual stream stays fp32 (embeddings are fp32, and fp32 + bf16 is
# fp32), cross_entropy runs in fp32
AUTOCAST = Precision(2, 4, 4, "autocast")
# FSDP's mixed-precision policy (scaling.shard_model): parameters cast to 16 bits, so everything computes in 16 bits
# (buffers such as the rotary frequencies are not parameters and stay fp32); the root returns fp32 logits
# (output_dtype), so log_softmax runs in fp32
PARAM16 = Precision(2, 2, 4, "bf16 parameters")


def precision_of(dtype, parallelism):
    dtype = str(dtype).removeprefix("torch.")
    if dtype == "float32":
        return FP32
    if dtype not in ("bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return PARAM16 if parallelism == "fsdp" else AUTOCAST


def _gqa(config):
    return getattr(config, "n_kv_head", 0) not in (0, config.n_head)


def layer_bytes_per_token(config, variant, p):
    """Bytes one block saves per token, tensor by tensor as the code computes them. Attention runs in SDPA's fused
    kernel, which keeps q, k, v, its output and a float logsumexp per head. With dropout the residual branches'
    bool masks are counted and attention dropout is taken to stay inside the fused kernel (CUDA's flash kernel keeps
    only an RNG seed); on CPU, SDPA with dropout falls back to its math path, which also saves the T x T weights."""
    C, H = config.n_embd, config.n_head
    a = p.compute
    if variant == "gpt":
        qkv = 3 * C  # q, k, v are views of c_attn's one output: SDPA saves that storage once
        layer_norm = C * p.residual + 2 * p.residual + C * a  # input, mean, rstd; its output as c_attn/c_fc input
        attention = qkv * a + H * 4 + C * a  # q k v, logsumexp, output (already (B, T, H, hd): no copy for c_proj)
        mlp = 2 * 4 * C * a  # c_fc output (GELU's input) and GELU's output (c_proj's input)
        dropout = 2 * C if config.dropout else 0  # bool masks of resid and MLP dropout
        return 2 * layer_norm + attention + mlp + dropout
    if variant == "llama":
        hidden, hd = config.hidden(), C // H
        kv = config.kv_heads() * hd
        # RMSNorm computes in fp32: its fp32 input (an upcast copy under 16-bit parameters), rstd, the normalised
        # fp32 tensor (for the weight's gradient), and its output as the next matmul's input
        rms_norm = 2 * C * 4 + 4 + C * a
        # rotated q and k are new tensors; v is a view of c_attn's output, so SDPA keeps that whole storage, unless
        # grouped-query attention repeats k and v into new (B, n_head, T, hd) tensors
        qkv = 2 * C + (C if _gqa(config) else C + 2 * kv)
        # SDPA's output follows the rotated q's (B, H, T, hd) layout on CPU, so transpose().contiguous() copies it
        # for c_proj (a kernel that returns the (B, T, H, hd) layout, as CUDA's flash does, skips the copy: the plan
        # then errs high by C per token and layer)
        attention = qkv * a + H * 4 + C * a + C * a
        swiglu = 4 * hidden * a  # w1 output (SiLU's input), SiLU's output, w3 output, their product (w2's input)
        if p is AUTOCAST:
            swiglu += C * a  # autocast casts the norm's output separately for w1 and for w3
        dropout = 2 * C if config.dropout else 0
        return 2 * rms_norm + attention + swiglu + dropout
    raise ValueError(f"the activation formula covers {', '.join(PLANNED_VARIANTS)}; variant {variant!r} saves other "
                     f"tensors (measure it with memory.saved_bytes)")


def layer_bytes_per_sequence_call(config, variant, p, T):
    """Bytes one block saves per micro-batch, independent of its batch size: LLaMA's rotary cos and sin (T, hd/2),
    computed in every layer in the buffers' fp32."""
    return 2 * T * (config.n_embd // config.n_head // 2) * 4 if variant == "llama" else 0


def head_bytes_per_token(config, variant, p):
    """Bytes saved outside the blocks per token: token ids and targets (int64), the final norm, the head's input and
    log_softmax over the vocabulary (cross_entropy's backward reads only that)."""
    C, a = config.n_embd, p.compute
    norm = C * p.residual + 2 * p.residual + C * a if variant == "gpt" else 2 * C * 4 + 4 + C * a
    dropout = C if config.dropout else 0  # the embedding dropout's bool mask
    return 8 + 8 + norm + config.vocab_size * p.loss + dropout


def activation_bytes(config, variant, batch, T, p, activation_checkpointing=False):
    """{"saved": bytes the forward saves for backward (what saved_bytes measures), "peak": the most held during the
    backward}. Without checkpointing they are equal. With it the forward keeps each block's input (the checkpoint's
    only saved tensors) and the head's tensors, and the backward recomputes one block at a time, holding its full
    activations on top."""
    tokens = batch * T
    per_layer = (tokens * layer_bytes_per_token(config, variant, p)
                 + layer_bytes_per_sequence_call(config, variant, p, T))
    head = tokens * head_bytes_per_token(config, variant, p) + p.loss  # + the loss's scalar total_weight
    # positions 0..T-1 (int64): saved by the position embedding (gpt), and once (one tensor) as every checkpoint's
    # input
    positions = 8 * T if variant == "gpt" or activation_checkpointing else 0
    if not activation_checkpointing:
        saved = config.n_layer * per_layer + head + positions
        return {"saved": saved, "peak": saved}
    saved = config.n_layer * tokens * config.n_embd * p.residual + head + positions
    return {"saved": saved, "peak": saved + per_layer}


# --------------------------------------------------------------------------------------------------------------
# the planner

@dataclass(frozen=True)
class MemoryPlan:
    """Per-rank bytes of one training setup. params, grads and optim include the transient copies the step holds
    (see plan); shards gives FSDP's sharded terms rank by rank, exactly what fully_shard and AdamW allocate."""
    variant: str
    parallelism: str
    world_size: int
    dtype: str
    block_size: int
    micro_batch: int
    activation_checkpointing: bool
    n_params: int
    params: int
    grads: int
    optim: int
    activations: int  # peak activations of micro_batch sequences
    activations_saved: int  # what the forward saves for backward (saved_bytes measures this)
    per_sequence: int  # activation bytes each more sequence of the micro-batch adds
    gpu_bytes: int
    max_micro_batch: int  # largest micro-batch whose step fits in gpu_bytes (0: not even one sequence)
    shards: dict | None  # fsdp: {"params" | "grads" | "optim": [bytes on rank r for r in range(world_size)]}

    @property
    def total(self):
        return self.params + self.grads + self.optim + self.activations

    @property
    def fixed(self):
        return self.params + self.grads + self.optim


def state_bytes(shapes, parallelism, world_size, p):
    """(params, grads, optim, shards) per rank, before activations.

    DDP: every rank holds the fp32 model, its fp32 gradients plus DDP's communication buckets (a second copy of
    the gradients, as train.py builds DDP without gradient_as_bucket_view), AdamW's two fp32 moments and a step
    scalar per tensor; under autocast also a 16-bit copy of every Linear weight, cached for the whole forward and
    saved for the backward.
    FSDP2 (each block sharded, then the root): each rank holds its fp32 shard of every parameter, gradient and
    moment (rows of dim 0, shard_numel). On top of that it gathers parameters in the compute dtype: the root's
    (the root stays gathered from the forward to the backward) and two blocks' (the block computing and the next
    one, prefetched); and in the backward it holds the root's and one block's unsharded gradients in the compute
    dtype plus one block's fp32 reduce-scatter input."""
    flat = shapes.all()
    n_tensors = len(flat)
    if parallelism == "ddp":
        n = sum(map(numel, flat))
        copies = shapes.linear_weights * p.compute if p is AUTOCAST else 0
        return 4 * n + copies, 2 * 4 * n, 2 * 4 * n + 4 * n_tensors, None
    if parallelism != "fsdp":
        raise ValueError(f"parallelism must be ddp or fsdp, got {parallelism!r}")
    ranks = range(world_size)
    local = [sum(shard_numel(s, world_size, r) for s in flat) for r in ranks]
    shards = {"params": [4 * n for n in local], "grads": [4 * n for n in local],
              "optim": [2 * 4 * n + 4 * n_tensors for n in local]}

    def gathered(group):  # all-gather output: every rank's padded chunk
        return world_size * sum(padded_shard_numel(s, world_size) for s in group)

    root = gathered(shapes.root)
    block = max((gathered(b) for b in shapes.blocks), default=0)
    blocks_gathered = min(2, len(shapes.blocks)) * block
    params = shards["params"][0] + (root + blocks_gathered) * p.compute
    grads = shards["grads"][0] + (root + block) * p.compute + block * 4
    return params, grads, shards["optim"][0], shards


def plan(model_config, variant, world_size=1, gpu_bytes=80 * GiB, micro_batch=1, block_size=None, dtype="bfloat16",
         parallelism="fsdp", activation_checkpointing=False):
    """A MemoryPlan: per-rank bytes of parameters, gradients and optimizer state (state_bytes), activations of
    micro_batch sequences of block_size tokens (activation_bytes; default the config's block_size), and the
    largest micro-batch whose total fits in gpu_bytes. dtype float32 plans fp32 throughout; bfloat16/float16 plan
    autocast under DDP and the mixed-precision policy (16-bit parameters, fp32 master and reduction) under FSDP.
    Not counted: the CUDA context, allocator fragmentation, communication buffers and short-lived tensors (logits
    and the gradients flowing between layers), so keep some headroom."""
    if world_size < 1 or micro_batch < 1 or gpu_bytes <= 0:
        raise ValueError(f"world_size and micro_batch must be >= 1 and gpu_bytes > 0, got {world_size}, "
                         f"{micro_batch}, {gpu_bytes}")
    if block_size is not None and block_size != model_config.block_size:
        model_config = dataclasses.replace(model_config, block_size=block_size)
    T = model_config.block_size
    p = precision_of(dtype, parallelism)
    layer_bytes_per_token(model_config, variant, p)  # an unplanned variant fails here, before the model is built
    shapes = model_shapes(model_config, variant)
    params, grads, optim, shards = state_bytes(shapes, parallelism, world_size, p)
    act = lambda b: activation_bytes(model_config, variant, b, T, p, activation_checkpointing)
    one, chosen = act(1), act(micro_batch)
    per_sequence = act(2)["peak"] - one["peak"]  # activations are affine in the batch size
    room = gpu_bytes - (params + grads + optim) - (one["peak"] - per_sequence)
    return MemoryPlan(variant=variant, parallelism=parallelism, world_size=world_size,
                      dtype=str(dtype).removeprefix("torch."), block_size=T,
                      micro_batch=micro_batch, activation_checkpointing=activation_checkpointing,
                      n_params=sum(map(numel, shapes.all())), params=params, grads=grads, optim=optim,
                      activations=chosen["peak"], activations_saved=chosen["saved"], per_sequence=per_sequence,
                      gpu_bytes=gpu_bytes, max_micro_batch=max(0, room // per_sequence), shards=shards)


def min_world_size(model_config, variant, gpu_bytes, micro_batch=1, limit=4096, **kwargs):
    """Fewest FSDP ranks whose per-rank plan fits micro_batch sequences in gpu_bytes (None if none up to limit
    does): the sharded terms shrink with the world size, the gathered copies and activations do not."""
    for world in range(1, limit + 1):
        if plan(model_config, variant, world, gpu_bytes, micro_batch, parallelism="fsdp",
                **kwargs).max_micro_batch >= micro_batch:
            return world
    return None
