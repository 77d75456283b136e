"""Rank functions for tests/test_dist.py (spawned ranks import them by name, so they live in a module)."""
import os
import sys
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


def exit_on_rank_one(rank, world_size):
    """Rank 1 leaves without a word (os._exit); rank 0 then fails in its collective."""
    if rank == 1:
        os._exit(3)
    t = torch.ones(4)
    dist.all_reduce(t)
    return t.tolist()


def abort_on_rank_one(rank, world_size):
    """Rank 1 prints its reason to stderr and aborts, as a C++ library does (SIGABRT)."""
    if rank == 1:
        sys.stderr.write("fatal: the gradient bucket layout differs between ranks\n")
        sys.stderr.flush()
        os.abort()
    t = torch.ones(4)
    dist.all_reduce(t)
    return t.tolist()
