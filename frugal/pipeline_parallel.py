"""Pipeline parallelism from scratch: TinyGPT cut into consecutive stages, one per rank, fed micro-batches.

Activations go forward and their gradients backward with send/recv. `schedule_gpipe` runs all m forwards
then all m backwards (Huang et al. 2019, GPipe); `schedule_1f1b` alternates one forward and one backward
in steady state (Narayanan et al. 2021, sec. 2.2, "PipeDream-Flush"). Both idle for a bubble of
(p-1)/(m+p-1) of the step; 1F1B keeps at most p micro-batches' activations alive instead of m.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from frugal.collectives import chunk_bounds
from frugal.dist import report
from frugal.model import GPTConfig, TinyGPT


def partition(n_layer: int, n_stages: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) block ranges, one per stage, sizes differing by at most one."""
    if not isinstance(n_stages, int) or n_stages < 1:
        raise ValueError(f"n_stages={n_stages!r}: must be a positive integer")
    if n_layer < n_stages:
        raise ValueError(f"n_layer={n_layer} blocks cannot fill {n_stages} pipeline stages (each needs at least one): "
                         f"use at most {n_layer} stages or a GPTConfig with n_layer >= {n_stages}")
    return chunk_bounds(n_layer, n_stages)  # the same even split as a ring all-reduce's chunks


def _check_m(m) -> None:
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m={m!r} micro-batches: must be an integer >= 1 (m=1 is no pipelining at all)")


def _check_stage(n_stages: int, stage: int) -> None:
    if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 1:
        raise ValueError(f"n_stages={n_stages!r}: must be a whole number >= 1")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < n_stages:
        raise ValueError(f"stage={stage!r}: pick a stage in 0..{n_stages - 1} of the {n_stages} stages")


def schedule_gpipe(n_stages: int, stage: int, m: int) -> list[tuple[str, int]]:
    """GPipe (Huang et al. 2019): forward all m micro-batches, then backward all m; holds m in flight."""
    _check_m(m)
    _check_stage(n_stages, stage)
    return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]


def schedule_1f1b(n_stages: int, stage: int, m: int) -> list[tuple[str, int]]:
    """1F1B (Narayanan et al. 2021, sec. 2.2): p-stage-1 warm-up forwards, then one forward / one backward,
    then the remaining backwards; holds at most p-stage micro-batches in flight."""
    _check_m(m)
    _check_stage(n_stages, stage)
    warm = min(n_stages - stage - 1, m)
    actions = [("F", i) for i in range(warm)]
    fwd, bwd = warm, 0
    while fwd < m:
        actions += [("F", fwd), ("B", bwd)]
        fwd, bwd = fwd + 1, bwd + 1
    actions += [("B", i) for i in range(bwd, m)]
    return actions


SCHEDULES = {"gpipe": schedule_gpipe, "1f1b": schedule_1f1b}


def _schedule(schedule):
    if callable(schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: pick one of {sorted(SCHEDULES)} or pass a schedule function")
    return SCHEDULES[schedule]


def in_flight(actions: list[tuple[str, int]]) -> int:
    """Most micro-batches whose activations are alive at once: max over the order of (#forwards - #backwards)."""
    live = peak = 0
    for kind, _ in actions:
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return peak


def simulate(schedule, n_stages: int, m: int, t_forward: float = 1.0, t_backward: float = 2.0) -> list[list[dict]]:
    """The ideal timeline of a schedule: each action starts when its stage is free and its input has arrived
    (free, instant communication). Same event format as a measured timeline."""
    sched = _schedule(schedule)
    orders = [sched(n_stages, s, m) for s in range(n_stages)]
    done: dict[tuple[str, int, int], float] = {}
    free = [0.0] * n_stages
    nxt = [0] * n_stages
    timelines: list[list[dict]] = [[] for _ in range(n_stages)]
    while any(nxt[s] < len(orders[s]) for s in range(n_stages)):
        progressed = False
        for s in range(n_stages):
            if nxt[s] == len(orders[s]):
                continue
            kind, i = orders[s][nxt[s]]
            if kind == "F":
                deps = [("F", s - 1, i)] if s > 0 else []
            else:                                   # its own forward, and the gradient from the next stage
                deps = [("F", s, i)] + ([("B", s + 1, i)] if s < n_stages - 1 else [])
            if any(d not in done for d in deps):
                continue
            start = max([free[s]] + [done[d] for d in deps])
            end = start + (t_forward if kind == "F" else t_backward)
            timelines[s].append({"kind": kind, "mb": i, "start": start, "end": end})
            done[(kind, s, i)] = free[s] = end
            nxt[s] += 1
            progressed = True
        if not progressed:
            raise RuntimeError("the schedule deadlocks: some action waits for one that never runs")
    return timelines


def measure_bubble(timelines: list[list[dict]]) -> float:
    """Measured bubble (estimate.pipeline_bubble_fraction predicts it): per stage, idle time over the whole step's window (first start to last end), averaged."""
    if not timelines or not all(timelines):
        raise ValueError("measure_bubble needs one non-empty timeline per stage (the 'timeline' each stage's "
                         "run returns): got an empty one")
    t0 = min(e["start"] for tl in timelines for e in tl)
    t1 = max(e["end"] for tl in timelines for e in tl)
    window = t1 - t0
    return sum(1 - sum(e["end"] - e["start"] for e in tl) / window for tl in timelines) / len(timelines)


class PipelineStage(nn.Module):
    """Blocks [start, end) of a TinyGPT; the first stage also embeds, the last also normalises, projects to the
    vocabulary and takes the loss. Built from a full model so equality with it can be tested."""

    def __init__(self, model: TinyGPT, stage: int, n_stages: int):
        super().__init__()
        if not 0 <= stage < n_stages:
            raise ValueError(f"stage={stage}: must be in [0, {n_stages})")
        self.cfg, self.stage, self.n_stages = model.cfg, stage, n_stages
        self.start, self.end = partition(model.cfg.n_layer, n_stages)[stage]
        self.is_first, self.is_last = stage == 0, stage == n_stages - 1
        self.blocks = nn.ModuleList(model.blocks[self.start:self.end])
        if self.is_first:
            self.wte, self.wpe, self.drop = model.wte, model.wpe, model.drop
        if self.is_last:
            self.ln_f, self.lm_head = model.ln_f, model.lm_head  # lm_head.weight is wte.weight (tied)

    def named_full_parameters(self):
        """(name in the full TinyGPT, parameter); the tied lm_head weight answers to 'wte.weight'."""
        seen = set()
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.startswith("blocks."):
                j, rest = name.split(".", 2)[1:]
                name = f"blocks.{self.start + int(j)}.{rest}"
            elif name == "lm_head.weight":
                name = "wte.weight"
            yield name, p

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (first stage) or activations (B, T, C) in; activations out, or the loss on the last stage."""
        if self.is_first:
            pos = torch.arange(x.size(1), device=x.device)
            x = self.drop(self.wte(x) + self.wpe(pos))                       # (B, T, C)
        for block in self.blocks:
            x = block(x)                                                     # (B, T, C)
        if not self.is_last:
            return x
        logits = self.lm_head(self.ln_f(x))                                  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))


def _exchange(ops: list) -> None:
    """Post these sends and receives together and wait for all: for a mirrored exchange, where the peer posts
    the same pair of messages in one group too (the tied embedding's gradient swap)."""
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()


def _post_in_order(msgs: list[tuple[str, str, torch.Tensor, int]], sends: list) -> None:
    """Post one communication point's messages, each in its own group, in an order both ends agree on; wait for
    the receives (their tensors are used next) and append the sends' (work, tensor) to `sends`, unwaited.

    msgs: (direction 'act' or 'grad', 'send' or 'recv', tensor, peer). Activations go before gradients and a
    send before a receive; the schedules below then make every pair of neighbouring stages post their messages
    to each other in the same sequence, so the k-th op on one end always meets the k-th on the other. One op
    per group matters on NCCL: it sets up each peer connection on first use, and two ranks that first use a
    connection in groups of different shape (a send + receive against a lone receive) exchange setup records
    of different sizes and fail ("Message truncated"). Ops of one rank run in posting order, and the
    consistent order means no two neighbours wait on each other, so this cannot deadlock. A send is not waited
    for here: the stage computes on while its neighbour picks the message up (the bubble formula assumes a
    hand-off costs the sender nothing); `_drain_sends` waits for them before their tensors are let go."""
    order = {("act", "send"): 0, ("act", "recv"): 1, ("grad", "send"): 2, ("grad", "recv"): 3}
    recvs = []
    for direction, kind, tensor, peer in sorted(msgs, key=lambda msg: order[msg[:2]]):
        op = dist.isend if kind == "send" else dist.irecv
        works = dist.batch_isend_irecv([dist.P2POp(op, tensor, peer)])
        if kind == "send":
            sends += [(w, tensor) for w in works]        # the tensor must outlive the transfer
        else:
            recvs += works
    for w in recvs:
        w.wait()


def _drain_sends(sends: list, wait: bool) -> None:
    """Let go of finished sends (all of them, waiting, if `wait`): only then may their tensors be freed."""
    keep = []
    for work, tensor in sends:
        if wait:
            work.wait()
        elif not work.is_completed():
            keep.append((work, tensor))
    sends[:] = keep


class _SavedBytes:
    """Counts the bytes autograd saves for backward during a forward (parameters excluded)."""

    def __init__(self, params):
        self.skip = {p.data_ptr() for p in params}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += t.untyped_storage().nbytes()
        return t


def pipeline_step(stage: PipelineStage, x: torch.Tensor, y: torch.Tensor, m: int, schedule="1f1b") -> dict:
    """One training step (forward and backward of the whole batch in m micro-batches) on this rank's stage.

    Gradients accumulate in the stage's parameters (the tied embedding's two halves are summed between the
    first and last stage). Returns the loss (on the last stage, else None), the timeline of forward (F) and
    backward (B) events, the peak number of micro-batches in flight and the peak bytes of saved activations."""
    _check_m(m)
    if x.size(0) % m:
        raise ValueError(f"batch {x.size(0)} is not divisible into m={m} micro-batches: "
                         f"pick m dividing {x.size(0)} or a batch that is a multiple of {m}")
    sched = _schedule(schedule)
    p, s = stage.n_stages, stage.stage
    dev = next(stage.parameters()).device
    # Wait for the compute stream only: a device-wide synchronize would also wait for the sends still in flight
    # on NCCL's streams (making every send blocking again) and count that wait as compute time.
    sync = (lambda: torch.cuda.current_stream(dev).synchronize()) if dev.type == "cuda" else (lambda: None)
    xs, ys = x.chunk(m), y.chunk(m)
    act_shape = (x.size(0) // m, x.size(1), stage.cfg.n_embd)                # (B/m, T, C)
    wire = next(stage.blocks.parameters()).dtype       # every stage sends and receives in this dtype
    inputs, outputs, saved = {}, {}, {}
    live = peak_live = peak_bytes = 0
    loss = torch.zeros((), device=dev)
    events, pending, sends = [], [], []           # sends: (work, tensor) posted but not yet known to be done
    for kind, i in sched(p, s, m):
        buf = None
        if kind == "F" and not stage.is_first:
            buf = torch.empty(act_shape, device=dev, dtype=wire)
            pending.append(("act", "recv", buf, s - 1))
        elif kind == "B" and not stage.is_last:
            buf = torch.empty(act_shape, device=dev, dtype=wire)
            pending.append(("grad", "recv", buf, s + 1))
        _post_in_order(pending, sends)        # the previous action's send with this action's receive
        pending = []
        _drain_sends(sends, wait=False)       # frees the tensors of sends already delivered
        sync()                                # the received input is here: idle time ends, compute starts
        t0 = time.perf_counter()
        if kind == "F":
            inp = xs[i] if stage.is_first else buf.requires_grad_(True)
            counter = _SavedBytes(stage.parameters())
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                out = stage(inp, ys[i]) if stage.is_last else stage(inp)
            if stage.is_last:
                out = out / m                                  # mean over micro-batches = mean over the batch
                loss += out.detach()
            inputs[i], outputs[i], saved[i] = inp, out, counter.bytes
            live += 1
            peak_live = max(peak_live, live)
            peak_bytes = max(peak_bytes, sum(saved.values()))
            if not stage.is_last:
                if out.shape != act_shape:
                    raise RuntimeError(f"stage {s} produced activations of shape {tuple(out.shape)}, but the next "
                                       f"stage expects {act_shape}")
                pending.append(("act", "send", out.detach().to(wire).contiguous(), s + 1))
        else:
            inp, out = inputs.pop(i), outputs.pop(i)
            out.backward() if stage.is_last else out.backward(buf.to(out.dtype))
            del saved[i]
            live -= 1
            if not stage.is_first:
                pending.append(("grad", "send", inp.grad.to(wire).contiguous(), s - 1))
        sync()
        events.append({"kind": kind, "mb": i, "start": t0, "end": time.perf_counter()})
    _post_in_order(pending, sends)
    _drain_sends(sends, wait=True)            # every message delivered before the step ends
    _sync_tied_embedding(stage)
    return {"loss": loss.item() if stage.is_last else None, "timeline": events,
            "in_flight": peak_live, "activation_bytes": peak_bytes}


def _sync_tied_embedding(stage: PipelineStage) -> None:
    """wte is both the first stage's embedding and the last stage's lm_head: sum its two gradients
    (Megatron keeps an embedding group of first and last stage for this)."""
    if stage.n_stages == 1 or not (stage.is_first or stage.is_last):
        return
    w = stage.wte.weight if stage.is_first else stage.lm_head.weight
    peer = stage.n_stages - 1 if stage.is_first else 0
    other = torch.empty_like(w.grad)
    _exchange([dist.P2POp(dist.isend, w.grad.clone(), peer), dist.P2POp(dist.irecv, other, peer)])
    w.grad += other


# ----------------------------------------------------------------------------- rank functions (for launch)

def pipeline_rank(rank: int, world_size: int, cfg: GPTConfig, batch: int, seq: int,
                  runs: list[tuple[str, int]], seed: int = 0, repeats: int = 1, return_grads: bool = True,
                  threads: int | None = None) -> list[dict]:
    """Rank function: build a seeded TinyGPT, keep this rank's stage, run a step for each (schedule, m) in runs.

    Each run: the loss, this stage's gradients under their full-model names (from the last repeat), and one
    timeline per repeat, for the caller to compare with a single-process step on the same seed."""
    from frugal.data import synthetic_batch
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    torch.manual_seed(seed)
    stage = PipelineStage(TinyGPT(cfg).to(dev), rank, world_size)
    x, y = synthetic_batch(cfg.vocab_size, batch, seq, torch.Generator().manual_seed(seed + 1), dev)
    out = []
    for schedule, m in runs:
        res = {"schedule": schedule, "m": m, "stage": rank, "timelines": []}
        for _ in range(repeats):
            stage.zero_grad(set_to_none=True)
            dist.barrier()
            step = pipeline_step(stage, x, y, m, schedule)
            res["timelines"].append(step["timeline"])
        res.update(loss=step["loss"], in_flight=step["in_flight"], activation_bytes=step["activation_bytes"])
        if return_grads:
            res["grads"] = {n: p.grad.detach().cpu() for n, p in stage.named_full_parameters()}
        out.append(res)
        report((schedule, m))                              # a progress bar in the caller moves one run on
    return out


def gather_runs(per_rank: list[list[dict]]) -> list[dict]:
    """Regroup launch(pipeline_rank, ...)'s per-rank lists into one dict per run: loss, timelines per repeat
    (each a list over stages), in_flight and activation_bytes per stage, and all stages' gradients merged."""
    runs = []
    for k, first in enumerate(per_rank[0]):
        stages = [r[k] for r in per_rank]
        grads: dict[str, list[torch.Tensor]] = {}
        for st in stages:
            for n, gr in st.get("grads", {}).items():
                grads.setdefault(n, []).append(gr)
        runs.append({
            "schedule": first["schedule"], "m": first["m"], "loss": stages[-1]["loss"],
            "timelines": [[st["timelines"][r] for st in stages] for r in range(len(first["timelines"]))],
            "in_flight": [st["in_flight"] for st in stages],
            "activation_bytes": [st["activation_bytes"] for st in stages],
            "grads": grads,
        })
    return runs
