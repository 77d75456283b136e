"""Rank functions for tests/test_dist.py (spawned ranks import them by name, so they live in a module)."""
import os
import time

import torch
import torch.distributed as dist


def rank_info(rank, world_size, value):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return {"rank": rank, "world": world_size, "sum": t.item(), "value": value, "pid": os.getpid()}


def raise_on_rank_one(rank, world_size):
    if rank == 1:
        raise ZeroDivisionError("rank one broke on purpose")
    dist.barrier()
    return rank


def hang_on_rank_one(rank, world_size):
    if rank == 1:
        time.sleep(600)
    dist.all_reduce(torch.ones(1))
    return rank


def sleep_forever(rank, world_size, pid_file):
    with open(f"{pid_file}.{rank}", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
