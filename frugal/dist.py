"""Start N ranks from a notebook cell, collect what each returns, and always reap them.

`launch(fn, world_size, *args)` runs fn(rank, world_size, *args) in world_size spawned processes joined
in one torch.distributed process group: gloo on CPU (2 to 4 ranks run on a laptop), NCCL with one GPU per
rank where there are enough GPUs. The parent owns the rendezvous store on a free port, every collective
has a timeout, a failing rank's traceback is raised in the caller, and no child outlives the call.
A rank can `report(message)` while it works; launch(on_report=...) hears it, so a progress bar can follow.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import socket
import tempfile
import threading
import time
import traceback
import weakref
from datetime import timedelta
from typing import Any, Callable

import cloudpickle
import torch
import torch.distributed as dist

from frugal.device import gpu_count


def loopback_store(world_size: int, timeout: float) -> dist.TCPStore:
    """The parent's rendezvous store, listening on 127.0.0.1 only (TCPStore alone listens on every interface,
    where any machine on the network could read and write its keys). The store owns the socket and closes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))                 # port 0: the OS picks a free one, so launches never race for one
    sock.listen(128)
    store = dist.TCPStore("127.0.0.1", sock.getsockname()[1], world_size, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=timeout), master_listen_fd=sock.fileno())
    sock.detach()                               # the store closes the descriptor; Python must not close it again
    return store


class RankError(RuntimeError):
    """A rank raised; the message carries its traceback."""


class RankTimeout(TimeoutError):
    """Ranks did not finish in time; usually a collective that some rank never joined."""


def pick_backend(world_size: int, backend: str = "auto") -> str:
    """'nccl' when there is one GPU per rank, else 'gloo' (CPU ranks)."""
    if backend == "auto":
        return "nccl" if gpu_count() >= world_size and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and gpu_count() < world_size:
        raise ValueError(f"backend='nccl' needs one GPU per rank: world_size={world_size} but {gpu_count()} GPU(s) "
                         f"are visible; use backend='gloo' (CPU ranks) or world_size <= {gpu_count()}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: pick 'auto', 'gloo' or 'nccl'")
    return backend


def _pack(fn: Callable, args: tuple) -> bytes:
    """fn and its args as bytes a spawned rank can load. cloudpickle sends a function defined in a notebook cell
    (or a lambda, or a nested function) by value, with the globals it uses; an importable one goes by name."""
    try:
        return cloudpickle.dumps((fn, args))
    except Exception as e:  # noqa: BLE001 - say which part cannot travel and what to do
        raise ValueError(f"{getattr(fn, '__qualname__', fn)!r} or its arguments cannot be sent to the ranks "
                         f"({type(e).__name__}: {e}): pass plain values (numbers, tensors, configs) and open "
                         f"files, sockets or locks inside the function instead") from e


def watch_parent(parent_pid: int) -> None:
    """Exit this rank if its parent dies (a killed kernel or torchrun agent leaves no orphans); run it in a thread."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


_REPORTS: list = []   # in a rank only: the queue to the parent (set by _rank_main; empty in the parent)


def report(message: Any) -> None:
    """From inside a rank: send `message` (picklable) to launch's on_report, as it happens. Outside launch: nothing."""
    if _REPORTS:
        rank, results = _REPORTS[0]
        results.put((rank, "report", message))


def _rank_main(rank: int, world_size: int, port: int, backend: str, timeout_s: float,
               parent_pid: int, packed: bytes, results: mp.Queue, stderr_path: str) -> None:
    threading.Thread(target=watch_parent, args=(parent_pid,), daemon=True).start()
    _REPORTS[:] = [(rank, results)]
    err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err, 2)              # what the rank and the C++ under it print (gloo's abort) reaches the parent's error
    os.close(err)
    try:
        store = dist.TCPStore("127.0.0.1", port, world_size + 1, is_master=False,
                              timeout=timedelta(seconds=timeout_s))
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        report("joined")
        try:
            fn, args = cloudpickle.loads(packed)
            out = fn(rank, world_size, *args)
        except BaseException:  # noqa: BLE001 - report before the group closes, so this cause arrives first
            results.put((rank, "error", traceback.format_exc()))
            time.sleep(0.5)    # let the message leave before peers see the connections drop
            raise SystemExit(1) from None
        dist.destroy_process_group()
        results.put((rank, "ok", cloudpickle.dumps(out)))
    except SystemExit:
        pass
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        results.put((rank, "error", traceback.format_exc()))


_COLLATERAL = ("connection closed by peer", "connection reset by peer", "broken pipe")


def _first_cause(first: tuple, results, wait_s: float = 1.0) -> tuple:
    """When a rank dies, its peers fail too ('connection closed by peer'): wait briefly for every error
    and report a rank whose error is not one of those echoes."""
    errors, t_end = [first], time.monotonic() + wait_s
    while time.monotonic() < t_end:
        try:
            item = results.get(timeout=0.1)
        except queue_mod.Empty:
            continue
        if item[1] == "error":
            errors.append(item)
    for item in errors:
        if not any(c in item[2].lower() for c in _COLLATERAL):
            return item
    return first


def _stderr_tail(path: str, lines: int = 15) -> str:
    """The last lines a rank wrote to stderr, indented, or '' if it wrote none."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().strip()
    except OSError:
        return ""
    return "" if not text else "\n".join("    " + line for line in text.splitlines()[-lines:])


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _dead_rank_error(rank: int, procs: list, paths: list[str], after: str = "") -> RankError:
    """A rank that died without reporting, named with its exit code and the end of its stderr."""
    tail = _stderr_tail(paths[rank])
    cause = "its stderr ended with:\n" + tail if tail else \
        "it printed nothing to stderr (it called os._exit, was killed from outside or ran out of memory; or a " \
        "script calls launch outside `if __name__ == '__main__':`)"
    return RankError(f"rank {rank} {_exit_reason(procs[rank].exitcode)} without reporting; {cause}{after}")


def _reap(procs: list) -> None:
    procs = [p for p in procs if p.pid is not None]   # never started: nothing to reap
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=3)
        if p.is_alive():
            p.kill()
            p.join(timeout=3)


DEFAULT_DEADLINE = 1800.0   # seconds: a rank stuck outside any collective ends the call after this, not never


def launch(fn: Callable, world_size: int, *args: Any, backend: str = "auto", timeout: float = 60.0,
           deadline: float | None = DEFAULT_DEADLINE, on_report: Callable[[int, Any], None] | None = None) -> list:
    """Run fn(rank, world_size, *args) on world_size ranks; return the list of their results, by rank.

    timeout: seconds any collective (and the rendezvous) may wait. deadline: seconds the whole run may take
    (30 minutes unless given; None = no limit). Interrupting the cell (or Ctrl-C) stops every rank at once.
    on_report(rank, message), called here as it happens: 'joined' once a rank is in the group, whatever it
    report()s, then 'done'.
    """
    if on_report is not None and not callable(on_report):
        raise TypeError(f"on_report={on_report!r}: pass a function (rank, message) -> None, or None")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be a positive integer")
    for name, v in (("timeout", timeout), ("deadline", deadline)):
        if v is None and name == "deadline":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and v < float("inf")):
            raise ValueError(f"{name}={v!r}: must be a positive number of seconds, e.g. 60")
    packed = _pack(fn, args)
    backend = pick_backend(world_size, backend)
    ctx = mp.get_context("spawn")
    store = loopback_store(world_size + 1, timeout)     # the parent owns the store
    results: mp.Queue = ctx.Queue()
    logs = tempfile.TemporaryDirectory(prefix="frugal-ranks-")
    paths = [os.path.join(logs.name, f"rank{r}.stderr") for r in range(world_size)]
    procs = [ctx.Process(target=_rank_main, daemon=True, name=f"frugal-rank{r}",
                         args=(r, world_size, store.port, backend, timeout, os.getpid(), packed, results, paths[r]))
             for r in range(world_size)]
    out: dict[int, Any] = {}
    t_end = None if deadline is None else time.monotonic() + deadline
    try:
        for p in procs:
            p.start()
        while len(out) < world_size:
            try:
                rank, status, payload = results.get(timeout=0.2)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in out]
                if dead:
                    time.sleep(0.5)  # let a dying rank's message arrive first
                    try:
                        rank, status, payload = results.get_nowait()
                    except queue_mod.Empty:
                        raise _dead_rank_error(dead[0], procs, paths) from None
                elif t_end is not None and time.monotonic() > t_end:
                    missing = [r for r in range(world_size) if r not in out]
                    raise RankTimeout(f"rank(s) {missing} did not finish within deadline={deadline}s: a rank is "
                                      f"stuck, or waits in a collective another rank never called. Raise deadline "
                                      f"if the work is just slow.") from None
                else:
                    continue
            if status == "error":
                rank, status, payload = _first_cause((rank, status, payload), results)
                silent = [r for r, p in enumerate(procs) if r != rank and r not in out and not p.is_alive()
                          and p.exitcode not in (0, None)]
                if silent and any(c in payload.lower() for c in _COLLATERAL):   # the peer that died is the cause
                    raise _dead_rank_error(silent[0], procs, paths, f"\nrank {rank} then failed:\n{payload}")
                tail = _stderr_tail(paths[rank])
                if tail and tail.strip() not in payload:
                    payload += f"\nrank {rank}'s stderr ended with:\n{tail}"
                hint = ""
                if "timed out" in payload.lower() or "timeout" in payload.lower():
                    hint = (f"\n(a collective waited longer than timeout={timeout}s: another rank is stuck or never "
                            f"called it; raise timeout if the work is just slow)")
                raise RankError(f"rank {rank} of {world_size} failed:\n{payload}{hint}")
            if status == "report":
                if on_report is not None:
                    on_report(rank, payload)
                continue
            out[rank] = cloudpickle.loads(payload)
            if on_report is not None:
                on_report(rank, "done")
        for p in procs:
            p.join(timeout=10)
        return [out[r] for r in range(world_size)]
    finally:
        _reap(procs)
        results.close()
        results.join_thread()
        logs.cleanup()
        del store


def share_cpu_threads(world_size: int) -> None:
    """On gloo (CPU) ranks, split this machine's cores between the ranks instead of letting each one take them all."""
    if dist.get_backend() == "gloo":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


def max_and_mean(values: list[float], device: torch.device) -> tuple[list[float], list[float]]:
    """Element-wise max and mean of `values` over every rank: a step lasts as long as its slowest rank."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    hi, mean = t.clone(), t.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(mean)                              # gloo has no AVG: sum, then divide
    return hi.tolist(), (mean / dist.get_world_size()).tolist()


def weak_method(method: Callable) -> Callable:
    """obj.method as a callable that holds obj weakly and does nothing once obj is gone: for hooks a wrapper
    registers on the model it wraps, so the model does not keep a dropped wrapper alive."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        return None if bound is None else bound(*args)
    return call


def grad_hooks(owner, params, method: str, *bound) -> None:
    """Register `owner.method(*bound, param)` as a post-accumulate-grad hook on each parameter, holding owner weakly.

    Such hooks live in C++, where Python's garbage collector cannot follow the cycle parameter -> hook -> wrapper
    -> model -> parameter: a strong reference would keep a dropped wrapper, and every buffer it owns, alive for
    the rest of the process. The hooks are removed when the owner is collected.
    """
    call = weak_method(getattr(owner, method))
    handles = [p.register_post_accumulate_grad_hook(lambda param: call(*bound, param)) for p in params]
    weakref.finalize(owner, remove_handles, handles)


def remove_handles(handles) -> None:
    """Remove hooks by their handles (what weakref.finalize runs when a hook owner is collected)."""
    for h in handles:
        h.remove()
