"""Saving and loading a training run so it resumes exactly where it stopped.

A run is more than its weights: the optimizer's moments, the step count, every random generator
(each rank's) and the batch sampler's position. Save all of them and a resumed run takes the same
steps, bit for bit, as one that was never interrupted. (Activation checkpointing is a different
thing: see recompute.py.) Under torch DDP or FSDP the full, unsharded state is gathered to rank 0
and written as one file, so a run can resume on any number of ranks.

A saved file is a header line (`frugal-run`, the format version, the SHA-256 of the payload) and the payload, a
`torch.save` of tensors and plain Python values only. Loading checks the checksum and unpickles with
`weights_only=True`, so a damaged file is refused with its name and a file carrying code never runs it. Every
write goes through `write_atomic`: a temporary file of a unique name in the same folder, flushed to disk, then
renamed over the old one, so a killed or failed write leaves the previous file whole.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

FORMAT_VERSION = 2
MAGIC = b"frugal-run"


class BatchSampler:
    """Random windows of a token stream, the same on every rank, each rank keeping its slice of the batch.

    Its whole state is one torch.Generator and a count of batches drawn, so `state_dict()` after
    step s and `load_state_dict()` later give batch s + 1 next, never a batch twice or one skipped.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("world_size", world_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"BatchSampler({name}={v!r}): must be a positive integer")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"BatchSampler(rank={rank!r}): pick a rank in 0..{world_size - 1} (world_size={world_size})")
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


def _tmp_pid(tmp: Path) -> int | None:
    """The writer's process id in a temporary name `.<name>.<pid>.<random>.tmp`, or None if it has none."""
    parts = tmp.name.rsplit(".", 3)
    return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporary files of `path` left by writers that died mid-write (their process is gone)."""
    path = Path(path)
    stale = [t for t in path.parent.glob(f".{path.name}.*.tmp")
             if (pid := _tmp_pid(t)) is not None and pid != os.getpid() and not _alive(pid)]
    for t in stale:
        t.unlink(missing_ok=True)
    return stale


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write data to path all or nothing: a temporary file of a unique name beside it, fsync, rename.

    A killed process or a full disk leaves the previous file as it was; two writers never share a temporary.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {path.parent} is not a folder; pick a path in a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full while writing {path} ({len(raw):,} bytes): free some space "
                                        f"or write elsewhere; the previous file is unchanged") from e
        raise


def check_writable(path: str | Path) -> None:
    """Fail now, not after training, when `path` cannot be written (a missing or read-only folder)."""
    path = Path(path)
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save to {path}: {folder} is not a writable folder; pick another --save path")
    if path.is_dir():
        raise IsADirectoryError(f"cannot save to {path}: it is a folder; name a file such as {path / 'run.pt'}")


def previous(path: str | Path) -> Path:
    """Where `save` keeps the checkpoint it replaced: a damaged newest file costs one interval, not the run."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


@contextmanager
def _locked(path: Path):
    """One writer of `path` at a time, across processes (an advisory lock on `<path>.lock`)."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _encode(blob: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(blob, buf)
    payload = buf.getvalue()
    header = b"%s %d %s\n" % (MAGIC, FORMAT_VERSION, hashlib.sha256(payload).hexdigest().encode())
    return header + payload


def read_verified(path: str | Path) -> dict:
    """The saved dict in `path`, after checking its header and checksum; tensors and plain values only."""
    path = Path(path)
    raw = path.read_bytes()
    header, _, payload = raw.partition(b"\n")
    fields = header.split(b" ")
    if not raw:
        raise ValueError(f"{path} is empty (a save that never finished?): resume from {previous(path)} if it "
                         f"exists, or start the run again")
    if len(fields) != 3 or fields[0] != MAGIC:
        raise ValueError(f"{path} is not a frugal checkpoint (or one from a frugal older than format "
                         f"{FORMAT_VERSION}): pass a file written by frugal.serialization.save")
    if fields[1] != str(FORMAT_VERSION).encode():
        raise ValueError(f"{path} has format version {fields[1].decode(errors='replace')}, this frugal reads "
                         f"{FORMAT_VERSION}: save it again with this version")
    if hashlib.sha256(payload).hexdigest().encode() != fields[2]:
        raise ValueError(f"{path} is damaged: its payload does not match the checksum it was saved with "
                         f"(truncated or changed on disk); resume from {previous(path)} if it exists")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:       # noqa: BLE001 - an unpickling refusal names a type we never write
        raise ValueError(f"{path} holds something other than tensors and plain values ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0]}); frugal refuses to run code from a checkpoint") from e


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

    Written atomically (`write_atomic`) under a lock, so a killed save or a second writer of the same path leaves
    a whole file; the file it replaces is kept as `previous(path)`.
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
        check_writable(path)
        blob = {"version": FORMAT_VERSION, "step": step, "model": model_state, "optimizer": optim_state,
                "rng": rngs, "sampler": sampler.state_dict() if sampler is not None else None,
                "extra": extra or {}}
        data = _encode(blob)
        with _locked(path):
            remove_stale_temporaries(path)
            if path.exists():                       # keep the last whole checkpoint: link, then rename over
                keep = previous(path)
                link = keep.with_name(f".{keep.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
                os.link(path, link)
                os.replace(link, keep)
            write_atomic(path, data)
    if _distributed():
        dist.barrier()


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         sampler: BatchSampler | None = None) -> dict:
    """Restore a run written by `save` into model, optimizer, sampler and this rank's generators.

    Returns the saved dict (its 'step' is the number of steps already done, 'extra' what was passed). A damaged
    newest file falls back, with a warning, to the one it replaced (`previous(path)`) when that one is whole.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved run at {path}: train without resuming first, or check the path")
    try:
        blob = read_verified(path)
    except ValueError as newest:
        keep = previous(path)
        if not keep.exists():
            raise
        try:
            blob = read_verified(keep)
        except ValueError:
            raise newest from None
        warnings.warn(f"{newest}; resuming from the previous checkpoint {keep} (step {blob['step']}) instead",
                      stacklevel=2)
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
