"""Noise-level conversions shared by the methods (docs/README.md section 2).

ComfyUI samples ``x = x0 + sigma * eps`` (EPS/V models). The VP (diffusers) latent is
``z = x / sqrt(1 + sigma^2)``, with ``alpha_bar = 1 / (1 + sigma^2)``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def vp_from_ve(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """VP latent z = x / sqrt(1 + sigma^2) (the UNet's own input scaling)."""
    return x / (1.0 + float(sigma) ** 2) ** 0.5


# t = j / 3996 contains every t = k / 999: ComfyUI's discrete (1000-step) schedules are log-linear in t
# between those points, so the table below inverts them exactly. Flow schedules (SD3's time shift, Flux's
# exponential shift) are not: near t = 0 log sigma bends like log t, and a uniform grid misplaced the smallest
# levels (6 % at Flux's sigma_min, 1e-4 at SD3's). Below t = 0.05 the grid is therefore refined geometrically
# (a constant ratio of 1.0033 between points, so the interpolation error stays near 1e-6 of t); the refined
# points split cells of the uniform grid without crossing a k / 999 point, so discrete schedules stay exact.
UNIFORM_TABLE_POINTS = 3997
FINE_TABLE_RANGE = (1e-7, 0.05)
FINE_TABLE_POINTS = 4000
SMALLEST_TIME = 1e-12  # stands for "just above t = 0", where a schedule jumps from 0 to its sigma_min


def _inverse_grid() -> torch.Tensor:
    uniform = torch.linspace(0.0, 1.0, UNIFORM_TABLE_POINTS, dtype=torch.float64)
    low, high = FINE_TABLE_RANGE
    fine = torch.logspace(math.log10(low), math.log10(high), FINE_TABLE_POINTS, dtype=torch.float64)
    return torch.unique(torch.cat([uniform, fine]))  # sorted


INVERSE_GRID = _inverse_grid()
INVERSE_TABLE_POINTS = len(INVERSE_GRID)


def tabulated_inverse(fn: Callable[[float], float],
                      grid: torch.Tensor | None = None) -> Callable[[torch.Tensor | float], torch.Tensor | float]:
    """Inverse of a non-decreasing ``fn`` on [0, 1] (t -> sigma), vectorised.

    ``fn`` is evaluated once on a grid (:data:`INVERSE_GRID` unless given: ``INVERSE_TABLE_POINTS`` calls,
    whatever the number of queries); a query is placed between its bracketing grid values by linear
    interpolation in log sigma. One pass for any number of sigmas, where bisection costs 60 calls of ``fn``
    per sigma. Takes a float or a tensor and returns the same kind; a positive sigma at or below ``fn``'s
    smallest positive value maps to the tiny ``t`` where ``fn`` reaches it (as bisection would), sigma 0 to 0,
    sigmas above ``fn``'s top to 1.
    """
    grid = INVERSE_GRID if grid is None else grid.to(torch.float64)
    points = len(grid)
    values = torch.tensor([fn(float(t)) for t in grid], dtype=torch.float64)
    values[0] = fn(SMALLEST_TIME) if values[0] <= 0 else values[0]  # the limit from above: log needs it positive
    values = torch.cummax(values, dim=0).values  # guard against a flat or noisy fn
    log_values = values.clamp_min(1e-300).log()

    def inverse(sigma):
        scalar = not isinstance(sigma, torch.Tensor)
        raw = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        s = raw.clamp_min(1e-300).log()
        upper = torch.searchsorted(log_values, s, right=False).clamp(1, points - 1)
        lower = upper - 1
        span = (log_values[upper] - log_values[lower]).clamp_min(1e-300)
        weight = ((s - log_values[lower]) / span).clamp(0.0, 1.0)
        t = grid[lower] + weight * (grid[upper] - grid[lower])
        t = torch.where(s <= log_values[0], torch.full_like(t, SMALLEST_TIME), t)
        t = torch.where(raw <= 0, torch.zeros_like(t), t)
        t = torch.where(s >= log_values[-1], torch.ones_like(t), t)
        return float(t[0]) if scalar else t.reshape(torch.as_tensor(sigma).shape)

    return inverse
