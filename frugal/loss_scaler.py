"""Dynamic loss scaling for fp16 training, from scratch; mirrors torch.amp.GradScaler (same protocol, same numbers).

Small gradients underflow in fp16 (below 2^-24 they become 0). Multiplying the loss by S shifts every
gradient up by S; dividing by S before the step shifts them back in fp32 (Micikevicius et al. 2018,
"Mixed Precision Training", sec. 3.2). S is dynamic: halve it and skip the step when a gradient is
inf/NaN, double it after `growth_interval` clean steps.

Usage is GradScaler's, so one line swaps ours for PyTorch's:
    scaler.scale(loss).backward(); scaler.unscale_(opt) (optional, e.g. to clip); scaler.step(opt); scaler.update()
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

MIN_SCALE = 2.0 ** -126    # the scale never backs off below fp32's smallest normal number (GradScaler goes to 0)

READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"   # per-optimizer stage within one iteration
_FIX = "This may indicate your script did not use scaler.scale(loss or outputs) earlier in the iteration."


def _f32(x: float) -> float:
    """x rounded to float32, as the scale is stored (inf when it overflows, like a float32 store)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


class LossScaler:
    """Dynamic loss scaler with GradScaler's protocol and update rule.

    The scale (float32) and growth tracker (int32) live on the device of the first scaled output and
    update() runs there, so nothing waits for the GPU. With a fused optimizer (`fused=True` AdamW/Adam/SGD)
    the step is skipped on the device too: no host sync at all. Any other optimizer costs one sync per step
    (to decide whether to call its step()), as GradScaler's does.
    """

    _COMPACT = 4096   # iterations of history kept as 0-d tensors before they are stacked into one (bounds memory)

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale={init_scale}: must be a positive finite number, e.g. 2.0**16")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor={growth_factor}: the growth factor must be > 1.0 (2.0 is usual)")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor={backoff_factor}: the backoff factor must be in (0, 1) (0.5 is usual)")
        if not (isinstance(growth_interval, int) and growth_interval > 0):
            raise ValueError(f"growth_interval={growth_interval}: must be a positive integer (2000 is usual)")
        self._enabled = enabled
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = growth_interval
        self._init_scale = _f32(init_scale)     # until the first scale() creates the tensors (GradScaler's lazy init)
        self._init_growth_tracker = 0
        self._scale: torch.Tensor | None = None            # 0-d float32 on the device: S
        self._growth_tracker: torch.Tensor | None = None   # 0-d int32: consecutive clean steps since S last changed
        self._per_optimizer: dict[int, dict[str, Any]] = {}
        # History, on the device until read: (S used, inf/NaN found) per iteration, some stacked into chunks.
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._scales_read: list[float] = []
        self._skipped_read: list[int] = []

    # -- the protocol --------------------------------------------------------------------------------

    def scale(self, outputs):
        """outputs · S (a tensor, or a list/tuple of them): backward of this gives gradients · S."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            if self._scale is None:
                self._scale = self._full(self._init_scale, torch.float32, outputs.device)
                self._growth_tracker = self._full(self._init_growth_tracker, torch.int32, outputs.device)
            return outputs * self._scale.to(outputs.device, non_blocking=True)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise ValueError("outputs must be a Tensor or an iterable of Tensors")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by S in place and record whether any is inf/NaN (no host sync)."""
        if not self._enabled:
            return
        self._check_scaled("unscale_")
        state = self._state(optimizer)
        if state["stage"] == UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] == STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        grads = self._grads(optimizer, allow_fp16=False)
        state["found_inf"] = self._non_finite(grads)
        # 1/S in float64 then float32, like GradScaler, so the unscaled gradients are bit-identical to its.
        inv_scale = self._scale.double().reciprocal().float()
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        for device, group in by_device.items():
            torch._foreach_mul_(group, inv_scale.to(device, non_blocking=True))
        state["stage"] = UNSCALED

    def step(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        """unscale_ (if not done yet), then optimizer.step() unless a gradient was inf/NaN (then skip).

        A fused optimizer (`_step_supports_amp_scaling`) gets S and the flag as tensors and does both itself.
        """
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._check_scaled("step")
        state = self._state(optimizer)
        if state["stage"] == STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            if state["stage"] == READY:          # check only: the fused kernel unscales by grad_scale as it steps
                state["found_inf"] = self._non_finite(self._grads(optimizer, allow_fp16=True))
            optimizer.grad_scale = self._scale if state["stage"] == READY else None   # None: already unscaled
            optimizer.found_inf = state["found_inf"].to(torch.float32)   # 1.0: the kernel leaves everything as is
            state["stage"] = STEPPED
            try:
                return optimizer.step(*args, **kwargs)
            finally:
                del optimizer.grad_scale, optimizer.found_inf
        if state["stage"] == READY:
            self.unscale_(optimizer)
        state["stage"] = STEPPED
        if state["found_inf"].item():            # the one host sync of the iteration (none with a fused optimizer)
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Back off (x backoff_factor) after an inf/NaN, grow (x growth_factor) after growth_interval clean steps.

        Runs on the device as tensor ops: S * factor is taken in float64 and rounded to float32, like torch's.
        """
        if not self._enabled:
            return
        self._check_scaled("update")
        scale, tracker = self._scale, self._growth_tracker
        flags = [s["found_inf"].to(scale.device) for s in self._per_optimizer.values() if "found_inf" in s]
        found = (flags[0] if len(flags) == 1 else torch.stack(flags).any()) if flags else None
        if new_scale is not None:
            if isinstance(new_scale, torch.Tensor):
                if new_scale.numel() != 1:
                    raise ValueError(f"new_scale has {new_scale.numel()} elements: pass a float or a 1-element tensor")
                self._scale = new_scale.detach().to(scale.device, torch.float32).reshape(()).clone()
            else:
                if not (math.isfinite(float(new_scale)) and float(new_scale) > 0):
                    raise ValueError(f"new_scale={new_scale}: a loss scale must be a positive finite number "
                                     f"(at 0 every gradient unscales to NaN); e.g. 2.0**16")
                self._scale = self._full(_f32(float(new_scale)), torch.float32, scale.device)
        else:
            if found is None:
                raise RuntimeError("No inf checks were recorded prior to update.")
            clean = tracker + 1
            grow = (clean == self._growth_interval) & ~found
            s = scale.double()
            candidate = torch.where(found, s * self._backoff_factor, torch.where(grow, s * self._growth_factor, s))
            candidate = candidate.float()
            # Never grow past fp32 to inf. (A backoff of a finite S is finite; an inf/NaN S stays inf/NaN, as in torch.)
            # Never back off to 0 either: GradScaler reaches 0 after ~150 overflowing steps in a row, and then
            # unscale_ divides by 0 and the step is not skipped. Ours stops at MIN_SCALE (fp32's smallest normal).
            self._scale = torch.where(torch.isfinite(candidate), candidate, scale).clamp_min(MIN_SCALE)
            self._growth_tracker = torch.where(found | grow, 0, clean)
        # S is replaced, never written in place, so the history can keep the tensor this iteration used.
        self._record(scale, found if found is not None else torch.zeros((), dtype=torch.bool, device=scale.device))
        self._per_optimizer = {}

    # -- state ---------------------------------------------------------------------------------------

    def get_scale(self) -> float:
        """The current scale S as a Python float (1.0 when disabled). Reads the device, so it syncs (as GradScaler)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else self._scale.item()

    def is_enabled(self) -> bool:
        return self._enabled

    def state_dict(self) -> dict[str, Any]:
        """GradScaler's five entries, so either scaler can load the other's (empty when disabled)."""
        if not self._enabled:
            return {}
        tracker = self._init_growth_tracker if self._growth_tracker is None else int(self._growth_tracker.item())
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": tracker}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        missing = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}: pass what LossScaler/GradScaler.state_dict() returned")
        if not (math.isfinite(float(state_dict["scale"])) and float(state_dict["scale"]) > 0):
            raise ValueError(f"state_dict['scale']={state_dict['scale']}: a loss scale must be positive and finite; "
                             f"the saved state is damaged, start from LossScaler() instead")
        self._init_scale = _f32(float(state_dict["scale"]))
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._scale is not None:              # new tensors, not fill_: the history holds the old ones
            self._scale = self._full(self._init_scale, torch.float32, self._scale.device)
            self._growth_tracker = self._full(self._init_growth_tracker, torch.int32, self._scale.device)

    @property
    def scales(self) -> list[float]:
        """The scale each iteration used (reading it syncs once for everything recorded since the last read)."""
        self._read_history()
        return list(self._scales_read)

    @property
    def skipped_steps(self) -> list[int]:
        """Iterations whose optimizer step was skipped (an inf/NaN gradient)."""
        self._read_history()
        return list(self._skipped_read)

    @property
    def history(self) -> dict[str, list]:
        """{'scale': the scale of each iteration, 'skipped': iterations whose step was skipped}."""
        self._read_history()
        return {"scale": list(self._scales_read), "skipped": list(self._skipped_read)}

    # -- helpers -------------------------------------------------------------------------------------

    def _state(self, optimizer) -> dict[str, Any]:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": READY})

    def _check_scaled(self, funcname: str) -> None:
        if self._scale is None:
            raise RuntimeError(f"Attempted {funcname} but _scale is None.  " + _FIX)

    @staticmethod
    def _full(value: float | int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A 0-d tensor filled on its device (a fill kernel, not a copy from pageable host memory that would wait)."""
        return torch.full((), value, dtype=dtype, device=device)

    @staticmethod
    def _grads(optimizer: torch.optim.Optimizer, allow_fp16: bool) -> list[torch.Tensor]:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not allow_fp16 and any(g.dtype == torch.float16 for g in grads):
            raise ValueError("Attempting to unscale FP16 gradients (GradScaler's words): the weights are fp16 "
                             "(model.half()?); keep fp32 master weights and run the forward under "
                             "torch.autocast(dtype=torch.float16), as TrainConfig(precision='fp16') does")
        if any(g.is_sparse for g in grads):
            raise TypeError("LossScaler does not unscale sparse gradients: use dense ones (nn.Embedding(sparse=False))")
        return grads

    @staticmethod
    def _non_finite(grads: list[torch.Tensor]) -> torch.Tensor:
        """One check over all gradients: max |g| per tensor (foreach, NaN propagates), then one amax.

        Returns a 0-d bool tensor on the gradients' device: True if any element is inf or NaN.
        """
        if not grads:
            raise RuntimeError("No inf checks were recorded for this optimizer.")  # no gradients to check
        device = grads[0].device
        norms = torch._foreach_norm(grads, math.inf)                       # [max |g|] per tensor
        top = torch.stack([n.to(device, torch.float32) for n in norms]).amax()
        return ~torch.isfinite(top)

    def _record(self, scale: torch.Tensor, found: torch.Tensor) -> None:
        """Keep this iteration's S and flag on the device; every _COMPACT iterations stack them (no sync)."""
        self._pending.append((scale, found))
        if len(self._pending) >= self._COMPACT:
            self._chunks.append(self._stack_pending())

    def _stack_pending(self) -> tuple[torch.Tensor, torch.Tensor]:
        scales, found = zip(*self._pending)
        self._pending = []
        return torch.stack(scales), torch.stack(found)

    def _read_history(self) -> None:
        """Move what was recorded since the last read to Python lists: one device-to-host copy."""
        chunks = self._chunks + ([self._stack_pending()] if self._pending else [])
        if not chunks:
            return
        rows = torch.stack([torch.cat([s for s, _ in chunks]).double(), torch.cat([f for _, f in chunks]).double()])
        scales, found = rows.tolist()            # float32 -> float64 is exact, so these are the stored values
        start = len(self._scales_read)
        self._scales_read += scales
        self._skipped_read += [start + i for i, f in enumerate(found) if f]
        self._chunks = []
