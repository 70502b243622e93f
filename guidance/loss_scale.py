"""The loss scale of a gradient through a reduced-precision (fp16/bf16) decoder or CLIP, shared by every
gradient-guided method. Pure torch."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def default_loss_scale(reduced_precision: bool, pixels_per_image: int) -> float:
    """1 in fp32 (the reference); otherwise the per-image element count, i.e. a per-pixel sum loss."""
    return float(pixels_per_image) if reduced_precision else 1.0


Gradient = Callable[[Callable[[], torch.Tensor], Sequence[torch.Tensor]], "list[torch.Tensor] | None"]


def fixed_scale_gradient(loss_scale: float = 1.0) -> Gradient:
    """``grad(loss_scale * loss) / loss_scale`` with no back-off; a non-finite gradient raises
    FloatingPointError (the pure default: never a silent NaN step)."""
    def gradient(loss_fn, inputs):
        grads = torch.autograd.grad(loss_fn() * loss_scale, list(inputs))
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise FloatingPointError(f"the loss gradient is not finite at loss scale {loss_scale:g}")
        return [g / loss_scale for g in grads]
    return gradient
