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

READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"   # per-optimizer stage within one iteration
_FIX = "This may indicate your script did not use scaler.scale(loss or outputs) earlier in the iteration."


def _f32(x: float) -> float:
    """x rounded to float32, as the scale is stored (the product is taken in double, then rounded, like torch's)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


class LossScaler:
    """Dynamic loss scaler with GradScaler's protocol and update rule.

    The scale lives on the host as a float32 value, so `get_scale()` never syncs. Each step does one
    non-finite check over all gradients (a foreach max-norm, then one reduction) and one host sync to
    decide whether to step, as GradScaler does with a non-fused optimizer.
    """

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
        self._scale = _f32(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = growth_interval
        self._growth_tracker = 0          # consecutive clean steps since the last change of scale
        self._scaled_once = False         # GradScaler's "_scale is None" until the first scale()
        self._per_optimizer: dict[int, dict[str, Any]] = {}
        self.scales: list[float] = []     # history: the scale each iteration used
        self.skipped_steps: list[int] = []  # history: iterations whose optimizer step was skipped

    # -- the protocol --------------------------------------------------------------------------------

    def scale(self, outputs):
        """outputs · S (a tensor, or a list/tuple of them): backward of this gives gradients · S."""
        if not self._enabled:
            return outputs
        self._scaled_once = True
        if isinstance(outputs, torch.Tensor):
            return outputs * self._scale
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
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if any(g.dtype == torch.float16 for g in grads):
            raise ValueError("Attempting to unscale FP16 gradients.")  # GradScaler's words: keep fp32 master weights
        if any(g.is_sparse for g in grads):
            raise TypeError("LossScaler does not unscale sparse gradients: use dense ones (nn.Embedding(sparse=False))")
        state["found_inf"] = self._non_finite(grads)
        # 1/S in float64 then float32, like GradScaler, so the unscaled gradients are bit-identical to its.
        inv_scale = _f32(1.0 / self._scale)
        by_device: dict[tuple, list[torch.Tensor]] = {}
        for g in grads:
            by_device.setdefault((g.device, g.dtype), []).append(g)
        for group in by_device.values():
            torch._foreach_mul_(group, inv_scale)
        state["stage"] = UNSCALED

    def step(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        """unscale_ (if not done yet), then optimizer.step() unless a gradient was inf/NaN (then skip)."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._check_scaled("step")
        state = self._state(optimizer)
        if state["stage"] == STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if state["stage"] == READY:
            self.unscale_(optimizer)
        state["found"] = bool(state["found_inf"].item())  # the one host sync of the iteration
        state["stage"] = STEPPED
        return None if state["found"] else optimizer.step(*args, **kwargs)

    def update(self, new_scale: float | None = None) -> None:
        """Back off (x backoff_factor) after an inf/NaN, grow (x growth_factor) after growth_interval clean steps."""
        if not self._enabled:
            return
        self._check_scaled("update")
        self.scales.append(self._scale)
        if new_scale is not None:
            self._scale = _f32(float(new_scale))
        else:
            if not any("found_inf" in s for s in self._per_optimizer.values()):
                raise RuntimeError("No inf checks were recorded prior to update.")
            # step() already read each flag; an optimizer only unscaled (never stepped) is read here.
            found = any(s["found"] if "found" in s else bool(s["found_inf"].item())
                        for s in self._per_optimizer.values() if "found_inf" in s)
            if found:
                self.skipped_steps.append(len(self.scales) - 1)
                self._scale = _f32(self._scale * self._backoff_factor)
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    grown = _f32(self._scale * self._growth_factor)
                    if math.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
        self._per_optimizer = {}

    # -- state ---------------------------------------------------------------------------------------

    def get_scale(self) -> float:
        """The current scale S as a Python float (1.0 when disabled); no host sync."""
        return self._scale if self._enabled else 1.0

    def is_enabled(self) -> bool:
        return self._enabled

    def state_dict(self) -> dict[str, Any]:
        """GradScaler's five entries, so either scaler can load the other's (empty when disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        missing = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}: pass what LossScaler/GradScaler.state_dict() returned")
        self._scale = _f32(float(state_dict["scale"]))
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])

    @property
    def history(self) -> dict[str, list]:
        """{'scale': the scale of each iteration, 'skipped': iterations whose step was skipped}."""
        return {"scale": list(self.scales), "skipped": list(self.skipped_steps)}

    # -- helpers -------------------------------------------------------------------------------------

    def _state(self, optimizer) -> dict[str, Any]:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": READY})

    def _check_scaled(self, funcname: str) -> None:
        if not self._scaled_once:
            raise RuntimeError(f"Attempted {funcname} but _scale is None.  " + _FIX)

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
