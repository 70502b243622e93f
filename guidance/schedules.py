"""Noise-level conversions shared by the methods (ALGORITHMS.md, "Parameterisation").

ComfyUI samples ``x = x0 + sigma * eps`` (EPS/V models). The VP (diffusers) latent is
``z = x / sqrt(1 + sigma^2)``, with ``alpha_bar = 1 / (1 + sigma^2)``.
"""
from __future__ import annotations

from typing import Callable

import torch


def alpha_bar_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor:
    """VP cumulative alpha for a VE sigma: alpha_bar = 1 / (1 + sigma^2)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + sigma * sigma)


def vp_from_ve(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """VP latent z = x / sqrt(1 + sigma^2) (the UNet's own input scaling)."""
    return x / (1.0 + float(sigma) ** 2) ** 0.5


def ve_from_vp(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """Inverse of :func:`vp_from_ve`."""
    return z * (1.0 + float(sigma) ** 2) ** 0.5


def invert_increasing(fn: Callable[[float], float], target: float, lo: float = 0.0, hi: float = 1.0,
                      iterations: int = 60) -> float:
    """Bisection for ``u`` in [lo, hi] with ``fn(u) == target``, for ``fn`` non-decreasing in ``u``."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
