"""Vector add in Triton: the smallest kernel, and how close it gets to the memory roofline.

Follows Triton's tutorial 01: the kernel, the wrapper (allocate, check, build the grid), the reference,
the benchmark in GB/s. The grid-stride loop lets a fixed number of programs cover any size
("persistent" grid), a tuning knob alongside BLOCK_SIZE and num_warps; `vector_add_config` is the rule
the wrapper follows when it is given neither.
"""
from __future__ import annotations

import statistics
import time

import torch
import triton
import triton.language as tl
from frugal.kernels import check_reachable, sm_count
import frugal.kernels.launch as launch_module
from frugal.kernels.launch import launch

from frugal.kernels.roofline import gbps, measure_copy_bandwidth, measure_graph_time
from frugal.measure import measure_time


@triton.jit
def vector_add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    """out[i] = x[i] + y[i]. Program p handles blocks p, p + P, p + 2P, ... of BLOCK_SIZE elements."""
    pid = tl.program_id(axis=0)
    n_programs = tl.num_programs(axis=0)
    n_blocks = tl.cdiv(n_elements, BLOCK_SIZE)
    for block in range(pid, n_blocks, n_programs):
        offsets = block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < n_elements                       # the last block may run past the end
        x = tl.load(x_ptr + offsets, mask=mask)
        y = tl.load(y_ptr + offsets, mask=mask)
        tl.store(out_ptr + offsets, x + y, mask=mask)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"vector_add takes two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} and y on {y.device}: move both to one device (y.to(x.device))")
    if x.shape != y.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} and y {tuple(y.shape)}: vector_add does not broadcast; "
                         f"expand and .contiguous() first, or use torch.add")
    if x.dtype != y.dtype:
        raise TypeError(f"x is {x.dtype} and y {y.dtype}: cast one (y.to(x.dtype))")
    if not (x.is_contiguous() and y.is_contiguous()):
        raise ValueError("vector_add needs contiguous tensors (it walks memory in order): pass x.contiguous()")


# Little's law: to stream at bandwidth B with latency L, B·L bytes must be in flight. An H200: 4.8 TB/s × ~1 µs
# over 132 SMs is ~36 KB per SM. One program of the rule has 2 inputs × 1024 × 4 B = 8 KB in flight and an SM
# holds 16 programs of 4 warps: 128 KB, enough once ~5 programs share each SM (n >= ~2^20 floats). More loads
# per thread (bigger blocks at 4 warps) leave fewer threads to issue them, which hurts small tensors (measured:
# BLOCK 2048 at 4 warps runs 0.81x torch.add at 2^20 on an H200 against the rule's 1.0x); halving it measured within noise.
def vector_add_config(n: int, element_size: int = 4) -> tuple[int, int]:
    """The rule, (BLOCK_SIZE, num_warps): 4 warps whose threads each load two 16-byte vectors of each input
    (8 floats), so BLOCK_SIZE = 4·32·2·16 / element_size (1024 floats); one program per block."""
    block = 4 * 32 * 2 * 16 // element_size
    return min(block, 1 << max(n - 1, 0).bit_length()), 4    # a tensor smaller than one block: one program


def vector_add(x: torch.Tensor, y: torch.Tensor, block_size: int | None = None, num_warps: int | None = None,
               programs: int | None = None) -> torch.Tensor:
    """x + y by vector_add_kernel: a new tensor. block_size/num_warps None: `vector_add_config`'s choice;
    `programs` caps the grid (persistent); None = one per block."""
    _check_pair(x, y)
    if block_size is None or num_warps is None:
        rule_block, rule_warps = vector_add_config(x.numel(), x.element_size())
        block_size, num_warps = block_size or rule_block, num_warps or rule_warps
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size={block_size}: Triton blocks must be a power of two (e.g. 1024)")
    out = torch.empty_like(x)
    n = x.numel()
    if n >= 2 ** 31:
        raise ValueError(f"{n} elements: offsets are 32-bit here; split the tensor into pieces below 2**31")
    check_reachable(x)
    if n == 0:
        return out                                        # nothing to launch
    n_blocks = -(-n // block_size)                        # ceil; plain ints cost less than triton.cdiv per call
    grid = (n_blocks if programs is None else max(1, min(programs, n_blocks)),)
    launch(vector_add_kernel, grid, x, y, out, n, BLOCK_SIZE=block_size, num_warps=num_warps)  # kernel[grid](...)
    return out


def vector_add_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.add(x, y)


def vector_add_bytes(n: int, element_size: int = 4) -> int:
    """Bytes moved by one add of n elements: read x, read y, write out."""
    return 3 * n * element_size


# Configurations the benchmark tries beside the rule's: (BLOCK_SIZE, num_warps, programs per SM or None for one
# per block). Fewer 16-byte loads per thread (512), more (2048, 4096 at 4 warps), as many with more warps, persistent.
CONFIGS = [(512, 4, None), (2048, 4, None), (2048, 8, None), (4096, 4, None), (8192, 16, None),
           (4096, 8, 8), (1024, 4, 16)]


def benchmark_vector_add(sizes: list[int], device: torch.device | str, configs=CONFIGS,
                         repeats: int = 20, dtype: torch.dtype = torch.float32) -> list[dict]:
    """GB/s of ours (every config, and the rule's choice), torch.add and a copy at each size; % of the copy's.

    Bytes: 3·n·element_size for an add, 2·n·element_size for the copy. "GB/s": median of `repeats` calls, each
    from an idle GPU (its launch latency counted); on a GPU "GPU GB/s" replays 10 calls from a CUDA graph.
    """
    device = torch.device(device)
    sms = sm_count(device)
    rows = []
    for n in sizes:
        x = torch.randn(n, device=device).to(dtype)
        y = torch.randn(n, device=device).to(dtype)
        add_bytes = vector_add_bytes(n, x.element_size())
        copy_bw = measure_copy_bandwidth(n, device, dtype, repeats)

        def timed(fn, n_bytes=add_bytes) -> dict:
            t = measure_time(fn, device, warmup=3, repeats=repeats).median_s
            out = {"GB/s": gbps(n_bytes, t), "% of copy": 100 * n_bytes / t / copy_bw}
            if device.type == "cuda":
                out["GPU GB/s"] = gbps(n_bytes, measure_graph_time(fn, device, calls=10, repeats=repeats))
            return out
        src, dst = torch.randn(n, device=device).to(dtype), torch.empty(n, device=device, dtype=dtype)
        rows.append({"n": n, "impl": "copy", "config": "dst.copy_(src)",
                     **timed(lambda: dst.copy_(src), 2 * n * x.element_size())})
        rows.append({"n": n, "impl": "torch.add", "config": "", **timed(lambda: torch.add(x, y))})
        block, warps = vector_add_config(n, x.element_size())
        rows.append({"n": n, "impl": "ours, the rule", "config": f"BLOCK={block} warps={warps} grid=blocks",
                     **timed(lambda: vector_add(x, y))})
        for block, warps, per_sm in configs:
            programs = None if per_sm is None else per_sm * sms
            fn = lambda: vector_add(x, y, block, warps, programs)
            rows.append({"n": n, "impl": "ours", "config": f"BLOCK={block} warps={warps} "
                         + ("grid=blocks" if per_sm is None else f"grid={per_sm}xSM"), **timed(fn)})
    return rows


def benchmark_launch(device: torch.device | str, calls: int = 2000, repeats: int = 7) -> list[dict]:
    """Host µs per call of a vector add at 4096 floats (a kernel far shorter than its launch) four ways:
    torch.add, Triton's kernel[grid], `launch` with its kept binary, and frugal's whole `vector_add` wrapper.
    Median of `repeats` loops of `calls` back-to-back calls, each timed by perf_counter on the host only."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device={device}: host launch cost means Triton's compiled path, which needs a GPU")
    g = torch.Generator(device=device).manual_seed(0)
    x, y = (torch.randn(4096, device=device, generator=g) for _ in range(2))
    out = torch.empty_like(x)
    plain = lambda: vector_add_kernel[(4,)](x, y, out, 4096, BLOCK_SIZE=1024, num_warps=4)
    kept = lambda: launch(vector_add_kernel, (4,), x, y, out, 4096, BLOCK_SIZE=1024, num_warps=4)
    impls = {"torch.add": lambda: torch.add(x, y), "kernel[grid]": plain,
             "launch(), kept binary" if launch_module.FAST else "launch() (plain here)": kept,
             "vector_add (checks + allocation + launch)": lambda: vector_add(x, y)}
    rows = []
    for name, fn in impls.items():
        for _ in range(50):
            fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) / calls * 1e6)
            torch.cuda.synchronize(device)
        rows.append({"impl": name, "host µs": statistics.median(times), "spread µs": max(times) - min(times)})
    return rows
