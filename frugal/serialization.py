"""Saving and loading a training run so it resumes exactly where it stopped.

A run is more than its weights: the optimizer's moments, the step count, every random generator
(each rank's) and the batch sampler's position. Save all of them and a resumed run takes the same
steps, bit for bit, as one that was never interrupted. (Activation checkpointing is a different
thing: see recompute.py.) Under torch DDP or FSDP the full, unsharded state is gathered to rank 0
and written as one file, so a run can resume on any number of ranks.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch
import torch.distributed as dist

FORMAT_VERSION = 1


class BatchSampler:
    """Random windows of a token stream, the same on every rank, each rank keeping its slice of the batch.

    Its whole state is one torch.Generator and a count of batches drawn, so `state_dict()` after
    step s and `load_state_dict()` later give batch s + 1 next, never a batch twice or one skipped.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"world_size={world_size} does not divide batch_size={batch_size}: "
                             f"pick a batch that is a multiple of {world_size} "
                             f"(e.g. {world_size * max(1, batch_size // world_size)})")
        if len(tokens) <= seq_len:
            raise ValueError(f"seq_len={seq_len} needs more than {seq_len} tokens, got {len(tokens)}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y), each (batch_size // world_size, seq_len), of the next global batch."""
        starts = torch.randint(len(self.tokens) - self.seq_len, (self.batch_size,), generator=self.generator)
        self.batches_drawn += 1
        per_rank = self.batch_size // self.world_size
        mine = starts[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()
        x = torch.stack([self.tokens[s: s + self.seq_len] for s in mine])            # (B/W, T)
        y = torch.stack([self.tokens[s + 1: s + 1 + self.seq_len] for s in mine])    # (B/W, T)
        return x.to(device), y.to(device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches_drawn": self.batches_drawn,
                "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        if (state["batch_size"], state["seq_len"]) != (self.batch_size, self.seq_len):
            raise ValueError(f"the saved sampler drew batches of {state['batch_size']}x{state['seq_len']}, "
                             f"this one {self.batch_size}x{self.seq_len}: resume with the same "
                             f"--batch-size and --seq-len")
        self.generator.set_state(state["generator"])
        self.batches_drawn = state["batches_drawn"]


def rng_state() -> dict:
    """Every random generator this process uses: Python's, torch's CPU one and the current CUDA device's."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Unsharded model and optimizer state dicts on CPU, keyed by parameter name (works for DDP and FSDP)."""
    if not _distributed():
        return model.state_dict(), optimizer.state_dict() if optimizer is not None else None
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return model_state, optim_state


def save(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         step: int = 0, sampler: BatchSampler | None = None, extra: dict | None = None) -> None:
    """Write the run after `step` completed steps; collective under torch.distributed (call it on every rank).

    Written to a temporary file and renamed, so a run killed while saving leaves the previous file whole.
    """
    model_state, optim_state = _full_state(model, optimizer)
    rng = rng_state()
    if _distributed():
        rngs = [None] * dist.get_world_size()
        dist.all_gather_object(rngs, rng)
        is_writer = dist.get_rank() == 0
    else:
        rngs, is_writer = [rng], True
    if is_writer:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"version": FORMAT_VERSION, "step": step, "model": model_state, "optimizer": optim_state,
                "rng": rngs, "sampler": sampler.state_dict() if sampler is not None else None,
                "extra": extra or {}}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
    if _distributed():
        dist.barrier()


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         sampler: BatchSampler | None = None) -> dict:
    """Restore a run written by `save` into model, optimizer, sampler and this rank's generators.

    Returns the saved dict (its 'step' is the number of steps already done, 'extra' what was passed).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved run at {path}: train without resuming first, or check the path")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {blob.get('version')}, this frugal reads {FORMAT_VERSION}: "
                         f"save it again with this version")
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    if _distributed():
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, blob["model"], options=options)
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=options)
    else:
        model.load_state_dict(blob["model"])
        if optimizer is not None:
            optimizer.load_state_dict(blob["optimizer"])
    if sampler is not None:
        if blob["sampler"] is None:
            raise ValueError(f"{path} holds no sampler state: it was saved without a sampler")
        sampler.load_state_dict(blob["sampler"])
    # Each rank gets its own generators back when the world size is unchanged; otherwise rank 0's.
    set_rng_state(blob["rng"][rank] if len(blob["rng"]) == world else blob["rng"][0])
    return blob
