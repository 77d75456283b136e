"""Activation checkpointing from scratch: keep a region's inputs, recompute its insides in backward.

Mirrors torch.utils.checkpoint (use_reentrant=False): `checkpoint(fn, *args)`, `checkpoint_sequential` with
√n segments (Chen et al. 2016), `checkpoint_selective` that keeps the matmul outputs and recomputes only the
cheap work (Korthikanti et al. 2022), and `Recompute`, the switch TinyGPT runs its blocks through
(TrainConfig.recompute). How a region saves and replays is frugal/recompute_frame.py (`_Frame`, `_run`); the
optional GPU speed path (LayerNorms rebuilt in one Triton pass) is frugal/recompute_fused.py.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from frugal.device import has_triton
from frugal.recompute_fused import FusedNorms   # the optional speed path
from frugal.recompute_frame import MATMUL_OPS, _Frame, _run   # noqa: F401 - _Frame: the lesson shows its hooks


def checkpoint(fn: Callable, *args, preserve_rng_state: bool = True, **kwargs):
    """fn(*args, **kwargs), saving only its tensor inputs; backward re-runs fn with the same RNG and autocast.
    Mirrors torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)."""
    return _run(fn, args, kwargs, preserve_rng_state, keep=None)


def checkpoint_selective(fn: Callable, *args, keep: frozenset = MATMUL_OPS, keep_in=None, fuse_norms=None,
                         preserve_rng_state: bool = True, **kwargs):
    """Like checkpoint, but keeps the outputs of `keep` ops (matmuls, attention) and recomputes only the cheap
    pointwise and normalisation work: selective recompute (Korthikanti et al. 2022, sec. 5).

    keep_in: the modules (e.g. [block.attn.c_attn, block.mlp.c_fc]) whose `keep` ops are kept; None = every
    `keep` op in fn. Naming them also costs less host time: only their ops go through a Python dispatch mode.
    fuse_norms: LayerNorms (e.g. [block.ln_1, block.ln_2]) rebuilt in backward from their kept mean and 1/std in
    one Triton pass: the optional speed path, see frugal.recompute_fused.FusedNorms (None: recomputed eagerly).
    """
    if not isinstance(keep, (set, frozenset)) or not all(isinstance(op, torch._ops.OpOverload) for op in keep):
        raise TypeError("keep must be a set of aten op overloads, e.g. {torch.ops.aten.mm.default}; "
                        "see frugal.recompute.MATMUL_OPS")
    if keep_in is not None:
        keep_in = list(keep_in)
        if not all(isinstance(m, torch.nn.Module) for m in keep_in):
            raise TypeError("keep_in must be a list of nn.Module (the submodules whose matmul outputs to keep), "
                            "or None to keep every matmul output in fn")
    fuse_norms = None if fuse_norms is None else list(fuse_norms)
    fast = FusedNorms(fuse_norms) if fuse_norms else None      # the optional speed path
    return _run(fn, args, kwargs, preserve_rng_state, keep=frozenset(keep), keep_in=keep_in, fast=fast)


def sqrt_segments(n: int) -> int:
    """√n segments: n/k stored boundaries plus one segment of n/k recomputed is smallest at k = √n
    (Chen et al. 2016, sec. 4.1)."""
    return max(1, round(math.sqrt(n)))


def checkpoint_sequential(modules, segments: int | None, x: torch.Tensor, *, preserve_rng_state: bool = True,
                          checkpoint_fn: Callable | None = None) -> torch.Tensor:
    """Run modules in order, storing only the inputs of `segments` segments (None = √n, Chen et al. 2016).
    As torch.utils.checkpoint.checkpoint_sequential, the last segment runs plainly: its backward comes first."""
    mods = list(modules)
    if not mods or not all(callable(m) for m in mods):
        raise TypeError("modules must be a non-empty nn.Sequential, nn.ModuleList or list of callables")
    n = len(mods)
    segments = sqrt_segments(n) if segments is None else segments
    if not isinstance(segments, int) or not 1 <= segments <= n:
        raise ValueError(f"segments={segments!r} for {n} modules: pick an integer in 1..{n}, or None for √n")
    ckpt = checkpoint_fn or (lambda f, inp: checkpoint(f, inp, preserve_rng_state=preserve_rng_state))
    size = n // segments

    def segment(part):                               # one segment as a function of its input
        return lambda inp: functools.reduce(lambda h, m: m(h), part, inp)

    for s in range(segments - 1):
        x = ckpt(segment(mods[s * size:(s + 1) * size]), x)
    return segment(mods[(segments - 1) * size:])(x)


# ----------------------------------------------------------------------------- TinyGPT's switch
POLICIES = ("none", "full", "every", "first", "selective", "sqrt")

# The selective policy's default: inside each block keep the outputs of the qkv projection, the attention core and
# the MLP's up-projection (the expensive work); recompute LayerNorms, GELU, the output projection, residual adds.
SELECTIVE_KEEP = ("attn.c_attn", "attn.core", "mlp.c_fc")


@dataclass(frozen=True)
class Recompute:
    """How TinyGPT runs its blocks (TinyGPT.recompute): which blocks recompute their activations in backward."""
    policy: str = "none"                    # none | full | every (every k-th block) | first (the first k) | selective | sqrt
    k: int = 1                              # for 'every' and 'first'
    checkpoint_fn: Callable | None = None   # None = ours; e.g. partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    keep: tuple[str, ...] | None = SELECTIVE_KEEP  # 'selective': block submodules whose matmul outputs stay;
                                            # None = every matmul output, found op by op (every op via Python)
    fused: bool = True                      # 'selective' on a GPU: LayerNorms rebuilt in one pass (recompute_fused)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"recompute policy {self.policy!r}: pick one of {POLICIES}")
        if not isinstance(self.k, int) or self.k < (1 if self.policy == "every" else 0):
            raise ValueError(f"k={self.k!r}: 'every' needs k >= 1, 'first' needs k >= 0")
        if self.policy == "selective" and self.checkpoint_fn is not None:
            raise ValueError("policy 'selective' is ours only: leave checkpoint_fn=None")

    def checkpointed(self, n_layer: int) -> list[int]:
        """Indices of the blocks that keep only their input (for 'sqrt': all but the last segment)."""
        if self.policy in ("full", "selective"):
            return list(range(n_layer))
        if self.policy == "every":
            return list(range(0, n_layer, self.k))
        if self.policy == "first":
            return list(range(min(self.k, n_layer)))
        if self.policy == "sqrt":
            k = sqrt_segments(n_layer)
            return list(range((n_layer // k) * (k - 1)))
        return []

    def __call__(self, blocks, x: torch.Tensor) -> torch.Tensor:
        if self.policy == "sqrt":
            return checkpoint_sequential(blocks, None, x, checkpoint_fn=self.checkpoint_fn)
        chosen = set(self.checkpointed(len(blocks)))
        run = self.checkpoint_fn or checkpoint
        for i, block in enumerate(blocks):
            if i not in chosen:
                x = block(x)
            elif self.policy == "selective":
                if getattr(block, "_compiled_call_impl", None) is not None:
                    raise ValueError(f"block {i} is compiled (module.compile()): selective recompute works inside "
                                     f"the block, where torch.compile saves other tensors than the recomputation "
                                     f"makes; use Recompute('full') with compiled blocks, or leave them uncompiled")
                x = checkpoint_selective(block, x, keep_in=self.kept_modules(block), fuse_norms=self.fused_norms(block, x))
            else:
                x = run(block, x)
        return x

    def fused_norms(self, block: torch.nn.Module, x: torch.Tensor) -> list[torch.nn.Module] | None:
        """The block's LayerNorms for the speed path: fused, on a GPU, with Triton (a CPU only interprets it)."""
        if not (self.fused and x.is_cuda and has_triton()):
            return None
        return [m for m in block.modules() if isinstance(m, torch.nn.LayerNorm)] or None

    def kept_modules(self, block: torch.nn.Module) -> list[torch.nn.Module] | None:
        """The submodules of `block` named by self.keep (None: keep every matmul output)."""
        if self.keep is None:
            return None
        try:
            return [block.get_submodule(name) for name in self.keep]
        except AttributeError as e:
            names = [n for n, _ in block.named_modules() if n]
            raise ValueError(f"Recompute(keep={self.keep!r}): {e}; the block's submodules are {names}") from None


def from_spec(spec: str) -> Recompute | None:
    """'none', 'full', 'every:2', 'first:3', 'selective' or 'sqrt' (TrainConfig.recompute) to a Recompute."""
    if not isinstance(spec, str):
        raise TypeError(f"recompute={spec!r}: pass a string such as 'full', 'every:2' or 'selective'")
    name, _, k = spec.partition(":")
    if name in ("every", "first"):
        if not k.isdigit():
            raise ValueError(f"recompute={spec!r}: write '{name}:K' with an integer K, e.g. '{name}:2'")
        return Recompute(name, int(k))
    if k or name not in POLICIES:
        raise ValueError(f"recompute={spec!r}: pick 'none', 'full', 'every:K', 'first:K', 'selective' or 'sqrt'")
    return None if name == "none" else Recompute(name)
