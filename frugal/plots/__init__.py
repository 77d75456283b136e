"""Matplotlib figures for the lessons: pure functions, data in, Figure out (so tests can call them).

One module per lesson (economics 00, precision and fp8 01, recompute 02, parallel 03-05, kernels 06, recipe 07);
every figure is re-exported here, so `from frugal import plots; plots.memory_bars(...)` is the way in.
"""
from frugal.plots._common import GIB, COLORS, human_bytes
from frugal.plots.economics import memory_bars, cost_bars, loss_curve, predicted_vs_measured
from frugal.plots.economics_quality import val_loss_overlay, dollars_to_target, parity_gaps
from frugal.plots.precision import (
    FORMAT_COLORS, format_ranges, gradient_histogram, scale_history, precision_runs, step_time_bars)
from frugal.plots.fp8 import cast_placement, crossover_size, fp8_distribution, fp8_speedup, recipe_trace
from frugal.plots.recompute import recompute_tradeoff, saved_bytes_by_block, largest_batch_bars
from frugal.plots.parallel import (
    PIPE_COLORS, ring_steps, bytes_per_rank, overlap_timeline, scaling, bus_bandwidth,
    sharding_memory_bars, comm_volume_bars, max_model_bars, pipeline_gantt, bubble_vs_formula,
    activation_per_stage, rank_grid, zero_on_gpus)
from frugal.plots.kernels import kernel_grid, bandwidth_vs_size, fused_vs_unfused, cross_entropy_memory
from frugal.plots.recipe import model_size_frontiers, recipe_ranking, recipe_runs

__all__ = ["GIB", "COLORS", "human_bytes", "memory_bars", "cost_bars", "loss_curve", "predicted_vs_measured",
           "val_loss_overlay", "dollars_to_target", "parity_gaps",
           "FORMAT_COLORS", "format_ranges", "gradient_histogram", "scale_history", "precision_runs",
           "step_time_bars", "cast_placement", "fp8_distribution", "fp8_speedup", "crossover_size", "recipe_trace", "recompute_tradeoff",
           "saved_bytes_by_block", "largest_batch_bars", "PIPE_COLORS",
           "ring_steps", "bytes_per_rank", "overlap_timeline", "scaling", "bus_bandwidth",
           "sharding_memory_bars", "comm_volume_bars", "max_model_bars", "pipeline_gantt", "bubble_vs_formula",
           "activation_per_stage", "rank_grid", "zero_on_gpus", "kernel_grid", "bandwidth_vs_size", "fused_vs_unfused",
           "cross_entropy_memory", "model_size_frontiers", "recipe_ranking", "recipe_runs"]
