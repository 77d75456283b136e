"""The frugal recipe on PyTorch's own distributed stack: torch DDP or FSDP (fully_shard), launched by torchrun.

    python -m frugal.torchrun_local --standalone --nproc-per-node 8 -m frugal.torchrun_train --model gpt2-small \
        --parallel fsdp --precision bf16    # torchrun, its stores on 127.0.0.1 only
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id job1 \\
        -m frugal.torchrun_train ...        # the same command on every node

NCCL on GPUs, gloo on CPU. Every --save-every steps it writes the whole run (frugal.serialization) and
`--resume` carries on from there, taking exactly the steps an uninterrupted run would have taken.
Each step is frugal.train.train_step, the lessons' own, with their --precision and --recompute names.
It logs loss, tokens/s and MFU (6N + 12·L·d·T FLOPs per token, frugal.measure). Lessons 01-04 build
each piece from scratch; this script is what you run once they are understood.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from frugal import data, measure, recompute, serialization, train
from frugal.device import catalog_name
from frugal.dist import watch_parent
from frugal.estimate import get_gpu
from frugal.model import TinyGPT, preset

# TrainConfig.precision's formats, and the dtype FSDP gathers the weights in for each
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def recompute_spec(spec: str) -> str:
    """--recompute takes TrainConfig.recompute's policies, checked by frugal.recompute.from_spec."""
    try:
        recompute.from_spec(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m frugal.torchrun_train",
        description="Train TinyGPT with torch DDP or FSDP on every rank torchrun starts; save and resume.")
    p.add_argument("--model", default="tiny", help="a frugal.model preset: tiny, small, medium, gpt2-small, ...")
    p.add_argument("--n-layer", type=int, help="override the preset's number of blocks")
    p.add_argument("--n-embd", type=int, help="override the preset's width")
    p.add_argument("--n-head", type=int, help="override the preset's heads")
    p.add_argument("--steps", type=int, default=100, help="total optimizer steps of the run (also when resuming)")
    p.add_argument("--batch-size", type=int, default=8, help="GLOBAL batch, sequences per step over all ranks")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the block size)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm; 0 = off")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the batch sampler")
    p.add_argument("--data", choices=("corpus", "synthetic"), default="corpus",
                   help="the shipped text, or random tokens (for speed runs)")
    p.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp",
                   help="ddp: replicate and all-reduce gradients; fsdp: shard weights, gradients and Adam (ZeRO-3)")
    p.add_argument("--precision", choices=tuple(DTYPES), default="fp32",
                   help="number format of the matmuls (TrainConfig.precision); fp16 adds a GradScaler")
    p.add_argument("--recompute", type=recompute_spec, default="none", metavar="POLICY",
                   help="activation checkpointing by frugal.recompute (TrainConfig.recompute): none, full, every:K, "
                        "first:K, selective or sqrt")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--save", default="runs/torchrun/state.pt", help="file the run is saved to")
    p.add_argument("--save-every", type=int, default=0, help="save every N steps (0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from --save if it exists")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak FLOP/s per device for MFU (default: the GPU's data sheet, or a measured CPU matmul)")
    return p


def setup(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device): joins the process group torchrun set up, or runs alone without one."""
    use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible: use --device cpu")
    if not dist.is_torchelastic_launched():
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    # torchrun's agent is this rank's parent: if it dies (SIGKILL gives it no time to stop us), stop too
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    local_rank = dist.get_node_local_rank(fallback_rank=0)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs on this node: "
                             f"lower --nproc-per-node to {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def check_args(args, world_size: int, block_size: int) -> None:
    """Refuse a plan that cannot run, naming the fix."""
    if args.batch_size % world_size:
        raise ValueError(f"world_size={world_size} does not divide --batch-size {args.batch_size}: "
                         f"pick a batch that is a multiple of {world_size} "
                         f"(e.g. {world_size * max(1, args.batch_size // world_size)})")
    if args.seq_len > block_size:
        raise ValueError(f"--seq-len {args.seq_len} is longer than the model's block_size={block_size}: "
                         f"lower --seq-len")
    for name in ("steps", "batch_size", "log_every"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    if args.save_every < 0:
        raise ValueError(f"--save-every {args.save_every}: use 0 (save at the end only) or a positive step count")


# Options that fix what a run computes: a resumed run must be given the values it was saved with. The others
# (--steps, --save-every, --log-every, --recompute, --compile, --parallel, --device, --peak-tflops) may change.
FIXED_ON_RESUME = ("model", "n_layer", "n_embd", "n_head", "batch_size", "seq_len", "lr", "weight_decay",
                   "grad_clip", "seed", "data", "precision")


def check_resume(args, saved_args: dict | None, saved_step: int, path: Path) -> None:
    """Refuse a resume whose options contradict the saved run's, or that asks for fewer steps than it has run."""
    if saved_args:
        differ = [f"--{k.replace('_', '-')} {getattr(args, k)!r} (saved: {saved_args[k]!r})"
                  for k in FIXED_ON_RESUME if k in saved_args and saved_args[k] != getattr(args, k)]
        if differ:
            raise ValueError(f"--resume from {path}: {', '.join(differ)}. The saved run's optimizer state and "
                             f"batches follow its own options: pass the saved values, or --save a new file to "
                             f"start a new run")
    if args.steps < saved_step:
        raise ValueError(f"--resume from {path}: --steps {args.steps} but the run has already taken {saved_step} "
                         f"steps; --steps is the run's total: pass --steps {saved_step + 1} or more to train on")


def wrap(model: TinyGPT, parallel: str, precision: str, device: torch.device, distributed: bool):
    """DDP, or FSDP2's fully_shard on each block then the root (weights kept in `precision` while gathered)."""
    if not distributed:
        return model
    if parallel == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def train_config(args, device: torch.device) -> train.TrainConfig:
    """The TrainConfig of this run: what train.build and train.train_step read (batch_size is the global batch;
    this script's ranks come from torchrun, so world_size stays 1)."""
    return train.TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                             weight_decay=args.weight_decay, grad_clip=args.grad_clip if args.grad_clip > 0 else None,
                             seed=args.seed, device=str(device), data=args.data, precision=args.precision,
                             scaler="torch", progress=False, recompute=args.recompute,
                             compile="blocks" if args.compile else "none")


def peak_flops(args, device: torch.device, rank: int) -> tuple[float, str]:
    """Peak FLOP/s of one device for MFU, and where the number comes from."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda" and catalog_name():
        name = catalog_name()
        return get_gpu(name).peak_flops(args.precision), f"{name} {args.precision} data sheet"
    # One rank measures while the others wait, so they do not share the cores during the measurement.
    value = torch.tensor([measure.measure_cpu_peak_flops(0.3) if rank == 0 else 0.0], dtype=torch.float64)
    if dist.is_initialized():
        dist.broadcast(value, 0)
    return float(value), "measured fp32 matmul (rank 0)"


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    rank, world, device = setup(args.device)
    distributed = dist.is_initialized()
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    try:
        overrides = {k: v for k, v in (("n_layer", args.n_layer), ("n_embd", args.n_embd),
                                       ("n_head", args.n_head)) if v is not None}
        cfg = preset(args.model, **overrides)
        args.seq_len = args.seq_len or cfg.block_size
        check_args(args, world, cfg.block_size)
        if args.precision == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
            raise ValueError("bf16 is emulated (slow) on this GPU (compute capability < 8.0): "
                             "use --precision fp16, which adds a loss scaler")

        tcfg = train_config(args, device)
        model, *_ = train.build(cfg, tcfg)               # seeded: the same initial weights on every rank
        flops_per_token = measure.model_flops_per_token(model, args.seq_len)
        n_params = model.num_params()
        model = wrap(model, args.parallel, args.precision, device, distributed)
        optimizer = train.make_optimizer(model, tcfg)     # after wrapping: FSDP replaces the parameters
        scaler = train.make_scaler(tcfg, device)          # fp16: torch's GradScaler; else None
        tokens = data.split(data.corpus_tokens())[0] if args.data == "corpus" else \
            torch.randint(cfg.vocab_size, (1 << 20,), generator=torch.Generator().manual_seed(args.seed))
        sampler = serialization.BatchSampler(tokens, args.batch_size, args.seq_len, args.seed, rank, world)

        start = 0
        save_path = Path(args.save)
        serialization.check_writable(save_path)     # a bad path fails now, not after every step has run
        if args.resume and save_path.exists():
            blob = serialization.load(save_path, model, optimizer, sampler)
            saved_model = blob["extra"].get("model")
            if saved_model is not None and saved_model != asdict(cfg):
                raise ValueError(f"{save_path} holds a different model ({saved_model}): "
                                 f"resume with the same --model/--n-layer/--n-embd/--n-head")
            check_resume(args, blob["extra"].get("args"), blob["step"], save_path)
            if scaler is not None and blob["extra"].get("scaler"):
                scaler.load_state_dict(blob["extra"]["scaler"])
            start = blob["step"]
            last_loss = blob["extra"].get("last_loss", float("nan"))
            log(f"resumed from {save_path} after step {start}" +
                (f": the run is complete at --steps {args.steps}, nothing to train" if start == args.steps else ""))
        elif args.resume:
            log(f"--resume: nothing at {save_path} yet, starting at step 0")
        if not args.resume or not save_path.exists():
            last_loss = float("nan")

        peak, peak_src = peak_flops(args, device, rank)
        log(f"world_size={world} {args.parallel} {args.precision} recompute={args.recompute} "
            f"model={args.model} params={n_params:,} batch={args.batch_size}x{args.seq_len} on {device.type}; "
            f"peak {peak / 1e12:.3g} TFLOP/s per device ({peak_src})")

        def save(step: int) -> None:
            serialization.save(save_path, model, optimizer, step, sampler,
                               extra={"model": asdict(cfg), "scaler": scaler.state_dict() if scaler else {},
                                      "args": vars(args), "last_loss": last_loss})
            log(f"saved step {step} to {save_path}")

        model.train()
        rates, step = [], start
        tokens_per_step = args.batch_size * args.seq_len          # global
        measure.synchronize(device)
        t0, t0_step = time.perf_counter(), start
        for step in range(start + 1, args.steps + 1):             # step = optimizer steps done after this one
            x, y = sampler.next_batch(device)
            train.schedule_lr(optimizer, tcfg, step - 1)
            loss = train.train_step(model, optimizer, x, y, tcfg, scaler)
            if step % args.log_every == 0 or step == args.steps:
                mean_loss = loss.float().clone()
                if distributed:
                    dist.all_reduce(mean_loss)                    # sum over ranks (gloo has no AVG)
                    mean_loss /= world
                last_loss = mean_loss.item()
                measure.synchronize(device)
                dt = time.perf_counter() - t0
                tps = tokens_per_step * (step - t0_step) / dt
                rates.append(tps)
                mem = (f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB" if device.type == "cuda"
                       else "not counted on a CPU")
                log(f"step {step:6d}  loss {last_loss:.4f}  tokens/s {tps:12,.0f}  "
                    f"MFU {measure.mfu(tps, flops_per_token, peak * world):6.1%}  peak mem {mem}")
                t0, t0_step = time.perf_counter(), step
            if args.save_every and step % args.save_every == 0 and step != args.steps:
                save(step)
                measure.synchronize(device)
                t0, t0_step = time.perf_counter(), step           # saving is not training time
        if step > start or not save_path.exists():
            save(args.steps)
        if distributed:     # every rank done before any tears its connections down: gloo aborts a rank whose peer
            dist.barrier()  # closed first ("terminate called without an active exception")
        steady = rates[1:] or rates                               # the first interval includes warm-up
        tps = statistics.median(steady) if steady else float("nan")
        summary = {"steps": args.steps, "resumed_from": start, "world_size": world, "parallel": args.parallel,
                   "precision": args.precision, "recompute": args.recompute, "params": n_params,
                   "final_loss": last_loss, "tokens_per_s": tps,
                   "mfu": measure.mfu(tps, flops_per_token, peak * world) if rates else float("nan"),
                   "peak_source": peak_src}
        log("summary " + json.dumps(summary))
        return summary
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # The run is done: checkpoint written, process group destroyed, output flushed. Skip the interpreter's
    # teardown, where a gloo rank now and then aborts ("terminate called without an active exception") while
    # C++ objects are destroyed, which torchrun reports as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
