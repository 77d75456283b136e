"""Rank functions for tests/test_data_parallel.py (spawned ranks import them by name, so they live in a module;
apart from tests/dist_workers.py, whose ranks time their start and need not import the trainer)."""
import torch

from frugal.data_parallel import FLAVOURS, wrap
from frugal.dist import share_cpu_threads
from frugal.model import preset
from frugal.train import TrainConfig, build, train_step


def check_against_reference(rank: int, world_size: int, steps: int = 3, bucket_cap_mb: float = 0.02,
                            per_rank_batch: int = 2) -> dict:
    """Max |param - reference| after `steps` AdamW steps, for each flavour and for no_sync accumulation
    over 2 micro-batches; the reference is single-process training on the whole (concatenated) batch.
    Rank != 0 starts from different weights, so the broadcast from rank 0 is tested too."""
    share_cpu_threads(world_size)
    mcfg = preset("tiny", n_embd=32, n_layer=2)
    kw = dict(steps=steps, batch_size=per_rank_batch * world_size, seq_len=32, progress=False, grad_clip=1.0)
    single = TrainConfig(**kw)
    ref, ref_opt, ref_batch, _ = build(mcfg, single)
    for _ in range(steps):
        train_step(ref, ref_opt, *ref_batch(), single)
    ref_params = [p.detach().clone() for p in ref.parameters()]
    out: dict = {"diff": {}, "vs_ddp": {}}
    final: dict = {}
    for flavour in FLAVOURS:
        for accumulate in (False, True):
            cfg = TrainConfig(**kw, world_size=world_size, data_parallel=flavour, bucket_cap_mb=bucket_cap_mb,
                              accumulation_steps=2 if accumulate else 1)
            model, opt, next_batch, _ = build(mcfg, cfg, rank)
            if rank != 0:
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(1.0)                       # wrong weights: the wrapper must overwrite them
            dp = wrap(model, flavour, bucket_cap_mb)
            for _ in range(steps):
                train_step(dp, opt, *next_batch(), cfg)   # accumulating: the first micro-batch under no_sync()
            final[(flavour, accumulate)] = [p.detach().clone() for p in model.parameters()]
            out["diff"][(flavour, accumulate)] = max((p - q).abs().max().item()
                                                    for p, q in zip(final[(flavour, accumulate)], ref_params))
            if flavour == "bucket" and not accumulate:
                out["timeline"], out["backward_end_s"], out["buckets"] = dp.timeline, dp.backward_end_s, dp.buckets
    for (flavour, accumulate), params in final.items():
        out["vs_ddp"][(flavour, accumulate)] = max((p - q).abs().max().item()
                                                   for p, q in zip(params, final[("ddp", accumulate)]))
    return out
