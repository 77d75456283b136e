"""Vector add in Triton: the smallest kernel, and how close it gets to the memory roofline.

Follows Triton's tutorial 01: the kernel, the wrapper (allocate, check, build the grid), the reference,
the benchmark in GB/s. The grid-stride loop lets a fixed number of programs cover any size
("persistent" grid), a tuning knob alongside BLOCK_SIZE and num_warps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from frugal.kernels import check_reachable

from frugal.kernels.roofline import gbps, measure_copy_bandwidth
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


def vector_add(x: torch.Tensor, y: torch.Tensor, block_size: int = 1024, num_warps: int = 4,
               programs: int | None = None) -> torch.Tensor:
    """x + y by vector_add_kernel: a new tensor. `programs` caps the grid (persistent); None = one per block."""
    _check_pair(x, y)
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"block_size={block_size}: Triton blocks must be a power of two (e.g. 1024)")
    out = torch.empty_like(x)
    n = x.numel()
    if n >= 2 ** 31:
        raise ValueError(f"{n} elements: offsets are 32-bit here; split the tensor into pieces below 2**31")
    check_reachable(x)
    if n == 0:
        return out                                        # nothing to launch
    n_blocks = triton.cdiv(n, block_size)
    grid = (n_blocks if programs is None else max(1, min(programs, n_blocks)),)
    vector_add_kernel[grid](x, y, out, n, BLOCK_SIZE=block_size, num_warps=num_warps)
    return out


def vector_add_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.add(x, y)


def vector_add_bytes(n: int, element_size: int = 4) -> int:
    """Bytes moved by one add of n elements: read x, read y, write out."""
    return 3 * n * element_size


# Configurations the benchmark tries: (BLOCK_SIZE, num_warps, programs per SM or None for one per block).
CONFIGS = [(1024, 4, None), (2048, 8, None), (4096, 8, None), (4096, 16, None), (8192, 16, None),
           (4096, 8, 8), (8192, 16, 4)]


def benchmark_vector_add(sizes: list[int], device: torch.device | str, configs=CONFIGS,
                         repeats: int = 20, dtype: torch.dtype = torch.float32) -> list[dict]:
    """GB/s of ours (every config), torch.add and a copy at each size; % of the copy's bandwidth.

    Bytes: 3·n·element_size for an add, 2·n·element_size for the copy. Median of `repeats` timed calls.
    """
    device = torch.device(device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    rows = []
    for n in sizes:
        x = torch.randn(n, device=device).to(dtype)
        y = torch.randn(n, device=device).to(dtype)
        add_bytes = vector_add_bytes(n, x.element_size())
        copy_bw = measure_copy_bandwidth(n, device, dtype, repeats)
        rows.append({"n": n, "impl": "copy", "config": "dst.copy_(src)", "GB/s": copy_bw / 1e9,
                     "% of copy": 100.0})
        t = measure_time(lambda: torch.add(x, y), device, warmup=3, repeats=repeats).median_s
        rows.append({"n": n, "impl": "torch.add", "config": "", "GB/s": gbps(add_bytes, t),
                     "% of copy": 100 * add_bytes / t / copy_bw})
        for block, warps, per_sm in configs:
            programs = None if per_sm is None else per_sm * sms
            fn = lambda: vector_add(x, y, block, warps, programs)
            t = measure_time(fn, device, warmup=3, repeats=repeats).median_s
            rows.append({"n": n, "impl": "ours", "config": f"BLOCK={block} warps={warps} "
                         + ("grid=blocks" if per_sm is None else f"grid={per_sm}xSM"),
                         "GB/s": gbps(add_bytes, t), "% of copy": 100 * add_bytes / t / copy_bw})
    return rows
