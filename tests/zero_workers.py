"""Rank functions for tests/test_zero.py (spawned ranks import them by name, so they live in a module)."""
import copy

import torch
import torch.nn as nn

from frugal.data import synthetic_batch
from frugal.model import TinyGPT, preset
from frugal.zero import ZeroDataParallel
from frugal.zero_experiment import ZeroRun, run_rank


def _strip(out: dict, keep_params: bool) -> dict:
    if not keep_params:
        out.pop("params", None)
    return out


def run(world_size, data_parallel, **kw) -> ZeroRun:
    """The tests' run: 3 steps of 4 synthetic sequences of 32 tokens per rank (batch_size is the global batch)."""
    return ZeroRun(data_parallel=data_parallel, world_size=world_size, batch_size=4 * world_size, seq_len=32,
                   steps=3, data="synthetic", progress=False, **kw)


def equivalence(rank, world_size, extra: bool):
    """Plain DP (torch DDP) and our stages 1-3 from the same weights on the same batches; with extra, also
    stage 3 with recompute, stages 2-3 with bf16 compute copies, and torch FSDP with and without recompute."""
    runs = {m: run(world_size, m, return_params=True) for m in ("ddp", "zero1", "zero2", "zero3")}
    if extra:
        runs["bucket"] = run(world_size, "bucket", return_params=True)
        runs["zero3+recompute"] = run(world_size, "zero3", recompute="full", return_params=True)
        runs["zero2 bf16"] = run(world_size, "zero2", precision="bf16")
        runs["zero3 bf16"] = run(world_size, "zero3", precision="bf16")
        runs["fsdp"] = run(world_size, "fsdp", return_params=True)                  # torch's stage 3
        runs["fsdp+recompute"] = run(world_size, "fsdp", recompute="full", return_params=True)
    return {name: _strip(run_rank(rank, world_size, r), keep_params=rank == 0) for name, r in runs.items()}


def _steps(zero, batches):
    for x, y in batches:
        _, loss = zero(x, y)
        loss.backward()
        zero.clip_grad_norm_(1.0)
        zero.step()
        zero.zero_grad()


def roundtrip(rank, world_size):
    """Save each stage's sharded state after 2 steps, resume it in a model with other weights, and compare
    the next 2 steps with the uninterrupted run; also load another rank's shard (must be refused)."""
    torch.set_num_threads(1)
    cfg = preset("tiny")
    gen = torch.Generator().manual_seed(rank)
    batches = [synthetic_batch(cfg.vocab_size, 2, 16, gen) for _ in range(4)]
    out = {}
    for stage in (1, 2, 3):
        torch.manual_seed(0)
        zero = ZeroDataParallel(TinyGPT(cfg), stage, lr=3e-3)
        _steps(zero, batches[:2])
        saved = copy.deepcopy(zero.state_dict())
        _steps(zero, batches[2:])
        straight = zero.full_parameters()
        torch.manual_seed(1)
        resumed = ZeroDataParallel(TinyGPT(cfg), stage, lr=3e-3)
        resumed.load_state_dict(saved)
        _steps(resumed, batches[2:])
        again = resumed.full_parameters()
        try:
            resumed.load_state_dict({**saved, "rank": (rank + 1) % world_size})
            wrong_rank = None
        except ValueError as e:
            wrong_rank = str(e)
        out[stage] = {"exact": all(torch.equal(straight[k], again[k]) for k in straight),
                      "n": len(straight), "wrong_rank": wrong_rank}
    return out


def freeing(rank, world_size):
    """Stage 3 holds at most the root and one block gathered in forward, drops them after, and frees every
    unit gathered again for backward once the backward is done."""
    torch.manual_seed(0)
    model = TinyGPT(preset("tiny"))
    zero = ZeroDataParallel(model, 3, lr=3e-3)
    live = []
    for block in model.blocks:                       # runs after zero's own pre-hook has gathered the block
        block.register_forward_pre_hook(lambda m, a: live.append(len(zero._live)))
    x, y = synthetic_batch(256, 2, 16, torch.Generator().manual_seed(rank))
    _, loss = zero(x, y)
    after_forward = {"live": len(zero._live), "weight": model.blocks[0].attn.c_attn.weight, "wte": model.wte.weight}
    loss.backward()
    return {"live_in_forward": live, "after_forward": after_forward, "regathered_after_backward": len(zero._regathered),
            "grads": [s.grad is not None for s in zero.weights]}


def bad_inputs(rank, world_size):
    """Errors that need a process group: more ranks than parameters, a model with no units to find."""
    torch.set_num_threads(1)
    errors = {}
    try:
        ZeroDataParallel(nn.Linear(1, 1), 1)           # 2 parameters
    except ValueError as e:
        errors["too_many_ranks"] = str(e)
    try:
        ZeroDataParallel(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), 3)
    except ValueError as e:
        errors["no_units"] = str(e)
    try:
        ZeroDataParallel(nn.Linear(8, 8), 3, units=[nn.Linear(2, 2)])
    except ValueError as e:
        errors["foreign_unit"] = str(e)
    return errors


def three_ranks(rank, world_size):
    return {"equivalence": equivalence(rank, world_size, extra=False), "bad": bad_inputs(rank, world_size)}


def collected(rank, world_size):
    """Each wrapper, dropped after a backward, is garbage (gc.collect finds it) and leaves no gradient hook on the
    model it wrapped: hooks kept in C++ must not hold it alive, or the next run's peak counts its buffers."""
    import gc
    import weakref
    from frugal.data_parallel import DataParallelBucket, DataParallelNaive
    torch.set_num_threads(1)
    makers = {"zero1": lambda m: ZeroDataParallel(m, 1, lr=1e-3), "zero2": lambda m: ZeroDataParallel(m, 2, lr=1e-3),
              "zero3": lambda m: ZeroDataParallel(m, 3, lr=1e-3), "bucket": DataParallelBucket,
              "naive": DataParallelNaive}
    out = {}
    for name, make in makers.items():
        model = TinyGPT(preset("tiny"))
        net = make(model)
        x, y = synthetic_batch(256, 2, 16, torch.Generator().manual_seed(rank))
        net(x, y)[1].backward()
        ref = weakref.ref(net)
        del net
        gc.collect()
        hooks = sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters()) \
            + sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
        out[name] = {"alive": ref() is not None, "hooks_left": hooks}
    return out


def two_ranks(rank, world_size):
    return {"equivalence": equivalence(rank, world_size, extra=True), "roundtrip": roundtrip(rank, world_size),
            "freeing": freeing(rank, world_size), "collected": collected(rank, world_size)}
