"""Typical wrong answers to frugal.exercises, each paired in test_exercises.py with a phrase its check must say."""
import math

import torch
import torch.distributed as dist
from frugal.train import TrainConfig


# ----------------------------------------------------------------------------- 00

def flops_forward_only(n_params, n_tokens):
    return 2 * n_params * n_tokens


def flops_per_token(n_params, n_tokens):
    return 6 * n_params


def flops_returns_string(n_params, n_tokens):
    return f"{6 * n_params * n_tokens:.3g}"


def bytes_fp32_only(n_params):
    return 12 * n_params


def bytes_adam_only(n_params):
    return 8 * n_params


def bytes_fp32_gradients(n_params):
    return (2 + 4 + 4 + 4 + 4) * n_params + 2 * n_params


# ----------------------------------------------------------------------------- 01

def bf16_truncate(x):
    return (x.view(torch.int32) & ~0xFFFF).view(torch.float32)


def bf16_half_up(x):
    rounded = ((x.view(torch.int32) + 0x8000) & ~0xFFFF).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded)


def bf16_nan_lost(x):
    bits = x.view(torch.int32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & ~0xFFFF).view(torch.float32)


def bf16_by_torch(x):
    return x.to(torch.bfloat16).float()


def fp8_scale_inverted(x, dtype):
    return x.abs().max().float() / torch.finfo(dtype).max


def fp8_scale_no_abs(x, dtype):
    amax = x.max().float()
    scale = (torch.finfo(dtype).max / amax).clamp(max=torch.finfo(torch.float32).max)
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def fp8_scale_zero_is_inf(x, dtype):
    amax = x.abs().max().float()
    return (torch.finfo(dtype).max / amax).clamp(max=torch.finfo(torch.float32).max)


def fp8_scale_uncapped(x, dtype):
    amax = x.abs().max().float()
    return torch.where(amax > 0, torch.finfo(dtype).max / amax, torch.ones_like(amax))


def fp8_cast_no_clamp(x, scale, dtype):
    return (x.float() * scale).to(dtype)


def fp8_cast_divides(x, scale, dtype):
    m = torch.finfo(dtype).max
    return (x.float() / scale).clamp(-m, m).to(dtype)


def fp8_cast_in_bf16(x, scale, dtype):
    m = torch.finfo(dtype).max
    return (x * scale).clamp(-m, m).to(dtype)          # a bf16 x stays bf16: rounded twice


def scaler_late_growth(scale, growth_tracker, found_inf, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    if growth_tracker == growth_interval:             # one step late: the tracker counts before comparing
        return scale * growth_factor, 0
    return scale, growth_tracker + 1


def scaler_keeps_tracker(scale, growth_tracker, found_inf, growth_factor=2.0, backoff_factor=0.5,
                         growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, growth_tracker   # forgets to restart the count
    if growth_tracker + 1 == growth_interval:
        return scale * growth_factor, 0
    return scale, growth_tracker + 1


def scaler_grows_to_inf(scale, growth_tracker, found_inf, growth_factor=2.0, backoff_factor=0.5,
                        growth_interval=2000):
    if found_inf:
        return scale * backoff_factor, 0
    if growth_tracker + 1 == growth_interval:
        return scale * growth_factor, 0               # in float64: never inf, where float32 is
    return scale, growth_tracker + 1


# ----------------------------------------------------------------------------- 02

class _NoRng(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        x = ctx.saved_tensors[0].detach().requires_grad_()
        with torch.enable_grad():
            out = ctx.fn(x)                            # dropout draws new masks
        torch.autograd.backward(out, grad)
        return None, x.grad


def checkpoint_no_rng(fn, *args):
    if len(args) != 1:
        return fn(*args)
    return _NoRng.apply(fn, *args)


def checkpoint_keeps_everything(fn, *args):
    return fn(*args)


def checkpoint_no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


# ----------------------------------------------------------------------------- 03

def ring_uses_all_reduce(tensor):
    dist.all_reduce(tensor)


def ring_reduce_to_rank_0(tensor):
    dist.reduce(tensor, dst=0)                        # a collective under a common name: caught on the ranks
    if dist.get_rank() == 0:
        for r in range(1, dist.get_world_size()):
            dist.send(tensor, r)
    else:
        dist.recv(tensor, 0)


def _exchange(send, dst, recv, src):
    ops = ([dist.isend(send, dst)] if send.numel() else []) + ([dist.irecv(recv, src)] if recv.numel() else [])
    for op in ops:
        op.wait()


def ring_drops_remainder(tensor):
    rank, n = dist.get_rank(), dist.get_world_size()
    size = tensor.numel() // n                        # the last numel % n elements are never reduced
    chunk = lambda c: tensor[(c % n) * size:(c % n + 1) * size]
    for s in range(n - 1):
        incoming = torch.empty_like(chunk(rank - s - 1))
        _exchange(chunk(rank - s), (rank + 1) % n, incoming, (rank - 1) % n)
        chunk(rank - s - 1).add_(incoming)
    for s in range(n - 1):
        _exchange(chunk(rank + 1 - s), (rank + 1) % n, chunk(rank - s), (rank - 1) % n)


def ring_no_all_gather(tensor):
    rank, n = dist.get_rank(), dist.get_world_size()
    base, extra = divmod(tensor.numel(), n)
    starts = [c * base + min(c, extra) for c in range(n + 1)]
    chunk = lambda c: tensor[starts[c % n]:starts[c % n + 1]]
    for s in range(n - 1):                            # reduce-scatter only: each rank has one finished chunk
        incoming = torch.empty_like(chunk(rank - s - 1))
        _exchange(chunk(rank - s), (rank + 1) % n, incoming, (rank - 1) % n)
        chunk(rank - s - 1).add_(incoming)


def buckets_forward_order(param_bytes, cap_bytes):
    buckets, current, size = [], [], 0
    for i in range(len(param_bytes)):
        if current and size + param_bytes[i] > cap_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += param_bytes[i]
    return buckets + ([current] if current else [])


def buckets_drop_last(param_bytes, cap_bytes):
    buckets, current, size = [], [], 0
    for i in reversed(range(len(param_bytes))):
        if current and size + param_bytes[i] > cap_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += param_bytes[i]
    return buckets                                    # the last bucket is lost


def buckets_split_at_cap(param_bytes, cap_bytes):
    buckets, current, size = [], [], 0
    for i in reversed(range(len(param_bytes))):
        if current and size + param_bytes[i] >= cap_bytes:   # a bucket exactly at the cap is allowed
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += param_bytes[i]
    return buckets + ([current] if current else [])


# ----------------------------------------------------------------------------- 04, 05

def shard_floor(numel, world_size, rank):
    size = numel // world_size
    return rank * size, (rank + 1) * size


def shard_uneven(numel, world_size, rank):
    base, extra = divmod(numel, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_clipped(numel, world_size, rank):
    size = math.ceil(numel / world_size)
    return min(rank * size, numel), min((rank + 1) * size, numel)


def schedule_gpipe(n_stages, n_micro, stage):
    return [("F", i) for i in range(n_micro)] + [("B", i) for i in range(n_micro)]


def schedule_no_warm_up(n_stages, n_micro, stage):
    return [a for i in range(n_micro) for a in (("F", i), ("B", i))]


def schedule_warm_up_too_long(n_stages, n_micro, stage):
    warm = min(n_stages - stage, n_micro)
    order = [("F", i) for i in range(warm)]
    for i in range(warm, n_micro):
        order += [("F", i), ("B", i - warm)]
    return order + [("B", i) for i in range(n_micro - warm, n_micro)]


def schedule_warm_up_unclamped(n_stages, n_micro, stage):
    warm = n_stages - stage - 1                       # more warm-up forwards than micro-batches when n_micro is small
    order = [("F", i) for i in range(warm)]
    for i in range(warm, n_micro):
        order += [("F", i), ("B", i - warm)]
    return order + [("B", i) for i in range(max(n_micro - warm, 0), n_micro)]


# ----------------------------------------------------------------------------- 06

def ce_unstable(logits, targets):
    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    probs[torch.arange(len(targets)), targets] -= 1
    return probs / len(targets)


def ce_sum(logits, targets):
    probs = torch.softmax(logits, dim=1)
    probs[torch.arange(len(targets)), targets] -= 1
    return probs


def ce_sign(logits, targets):
    probs = torch.softmax(logits, dim=1)
    probs[torch.arange(len(targets)), targets] -= 1
    return -probs / len(targets)


def ce_in_place(logits, targets):
    logits.sub_(logits.max(dim=1, keepdim=True).values).exp_()
    logits /= logits.sum(dim=1, keepdim=True)
    logits[torch.arange(len(targets)), targets] -= 1
    return logits / len(targets)


# ----------------------------------------------------------------------------- 07

def plan_always_fp32(memory_bytes, model_cfg, batch, seq):
    return TrainConfig(batch_size=batch, seq_len=seq)


def plan_smaller_batch(memory_bytes, model_cfg, batch, seq):
    return TrainConfig(batch_size=1, seq_len=seq)


def plan_always_everything(memory_bytes, model_cfg, batch, seq):
    return TrainConfig(batch_size=batch, seq_len=seq, precision="bf16", recompute="full")


def plan_returns_dict(memory_bytes, model_cfg, batch, seq):
    return {"precision": "bf16", "batch_size": batch, "seq_len": seq}
