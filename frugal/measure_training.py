"""Measurements that take training steps, built on frugal.train: a precision's loss, speed and memory
(lesson 01), a recompute policy's saved bytes, time and peak memory (lesson 02), and a run on ranks whose
progress a dashboard can follow (lessons 03 and 07)."""
from __future__ import annotations

import statistics

import torch

from frugal import estimate
from frugal.measure import measure_activation_bytes, measure_peak_memory, measure_time
from frugal.model import GPTConfig, TinyGPT
from frugal.train import TrainConfig, TrainResult, autocast, batch_fn, forward_backward, train, train_data_parallel


def measure_precision(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig) -> dict:
    """Train TinyGPT in cfg.precision and report what the lesson plots: loss per step, median step time,
    memory (peak CUDA memory on a GPU, bytes saved for backward on CPU) beside estimate.py's prediction."""
    result = train(model_cfg, cfg)
    model = result.model
    device = next(model.parameters()).device
    times = result.column("time_s")
    times = times[2:] if len(times) > 4 else times               # leave out warm-up steps
    act_bytes = 2 if cfg.precision in ("fp16", "bf16") else 4
    act_est = sum(estimate.estimate_activation_bytes(model.cfg, cfg.batch_size, cfg.seq_len, act_bytes).values())
    if device.type == "cuda":
        memory, kind = max(result.column("peak_memory_bytes")), "peak CUDA memory"
        estimated = 16 * model.num_params() + act_est            # fp32 weights, grads, Adam m and v + activations
    else:
        x, y = batch_fn(cfg, model.cfg.vocab_size, device)()
        with autocast(cfg, device):
            memory = measure_activation_bytes(model, x, y)
        kind, estimated = "saved activations", act_est
    return {"loss": result.column("loss"), "step_ms": statistics.median(times) * 1e3, "memory_bytes": memory,
            "memory_estimate_bytes": estimated, "memory_kind": kind, "scale": result.column("loss_scale"),
            "skipped": [r.step for r in result.history if r.skipped]}


def measure_recompute(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, recompute,
                      warmup: int = 1, repeats: int = 3) -> dict:
    """Saved bytes, forward+backward time (median, and the min and max of the repeats) and (CUDA) peak memory
    of model(x, y) with model.recompute set.
    The step is forward_backward in fp32, gradients then dropped: no optimizer, so the weights stay as they are."""
    before = getattr(model, "recompute", None)
    model.recompute = recompute
    cfg = TrainConfig(progress=False)

    def step():
        forward_backward(model, x, y, cfg)
        model.zero_grad(set_to_none=True)

    try:
        saved = measure_activation_bytes(model, x, y)
        timing = measure_time(step, x.device, warmup=warmup, repeats=repeats)
        peak = measure_peak_memory(step, x.device)
    finally:
        model.recompute = before
    return {"saved_bytes": saved, "step_s": timing.median_s, "step_min_s": timing.min_s,
            "step_max_s": max(timing.times_s), "peak_memory_bytes": peak}


def train_with_reports(model_cfg: GPTConfig | TinyGPT, cfg: TrainConfig, on_report=None,
                       timeout: float = 120.0) -> TrainResult:
    """train(model_cfg, cfg), with cfg.world_size > 1 launched here so that on_report(rank, message) hears each
    rank join and finish (dist.launch's reports) and rank 0 end each step, ('step', k); one process trains
    through train() itself and reports its steps as rank 0's."""
    if on_report is None:
        return train(model_cfg, cfg)
    if cfg.world_size == 1:
        return train(model_cfg, cfg, on_step=lambda r: on_report(0, ("step", r.step + 1)))
    return train_data_parallel(model_cfg, cfg, timeout, on_report)
