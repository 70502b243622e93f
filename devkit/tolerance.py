"""Comparing numbers across calls, code paths and batch shapes (README "Comparing numbers in tests").

Two computations of the same math by different calls, kernels, batch shapes or thread counts round differently
(AVX2 vs AVX-512 kernels, oneDNN vs native convolutions, another reduction order), so they are compared with a
bound relative to the data's scale: ``rtol`` at least ``MIN_RTOL`` of the coarser dtype, plus an absolute floor
``atol = atol_fraction * scale`` (``scale``: the expected tensor's largest magnitude unless given), so an element
near zero is judged against the tensor's magnitude, not its own. Exact comparisons (``torch.equal``, or
``torch.testing.assert_close`` with an ``# exact: <why>`` comment) are for the very same call or no float
arithmetic. tests/test_tolerances.py checks the suite keeps to this.
"""
from __future__ import annotations

import torch

# The smallest relative tolerance per dtype, well above its resolution (machine epsilon: fp64 2.2e-16, fp32 1.2e-7,
# fp16 9.8e-4, bf16 7.8e-3): a cross-path bound at one or two ulps fails on a CPU with other kernels.
MIN_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def coarsest_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The floating dtype with the largest epsilon among ``tensors`` (float32 when none is floating)."""
    dtypes = [t.dtype for t in tensors if t.is_floating_point()]
    return max(dtypes, key=lambda d: torch.finfo(d).eps) if dtypes else torch.float32


def tolerance(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol_fraction: float | None = None,
              scale: float | None = None) -> tuple[float, float]:
    """(rtol, atol) for comparing ``actual`` with ``expected``; refuses a bound below the dtype's resolution."""
    dtype = coarsest_dtype(actual, expected)
    floor = MIN_RTOL.get(dtype, 1e-5)
    fraction = rtol if atol_fraction is None else atol_fraction
    if rtol < floor or fraction < floor:
        raise ValueError(f"tolerance below {dtype}'s resolution for a cross-path comparison: rtol={rtol:g}, "
                         f"atol_fraction={fraction:g}; use at least {floor:g} (or an exact comparison of the very "
                         "same call, marked '# exact: <why>')")
    if scale is None:
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return rtol, fraction * scale


def assert_close_across_paths(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, *, why: str,
                              atol_fraction: float | None = None, scale: float | None = None,
                              what: str = "") -> float:
    """Assert ``|actual - expected| <= rtol * |expected| + atol_fraction * scale`` elementwise (``atol_fraction``
    defaults to ``rtol``; ``scale`` to max |expected|); ``why`` says why the two differ by rounding only.
    Returns the largest absolute difference."""
    if not why or not why.strip():
        raise ValueError("why: say which calls / paths / batch shapes are compared")
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    rtol, atol = tolerance(actual, expected, rtol, atol_fraction, scale)
    a, e = actual.double().cpu(), expected.double().cpu()
    difference = float((a - e).abs().max()) if a.numel() else 0.0
    label = f"{what}: " if what else ""
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, check_dtype=False,
                               msg=lambda m: f"{label}max |difference| {difference:.3g} (rtol {rtol:g}, atol "
                                             f"{atol:.3g}; {why})\n{m}")
    return difference


def close_across_paths(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5,
                       atol_fraction: float | None = None, scale: float | None = None) -> bool:
    """The boolean form of :func:`assert_close_across_paths` (same bound), for searches such as "which window
    is this crop"."""
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    if actual.shape != expected.shape:
        return False
    rtol, atol = tolerance(actual, expected, rtol, atol_fraction, scale)
    return bool(torch.allclose(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol))


# Reasons two results differ by rounding only, for ``why=`` (a call site adds its specifics in a comment).
FORMULA = "the pack's function vs the formula written in the test: the same math in another operation order"
TWO_RUNS = "two runs of the same graph: kernels may split or vectorise the work differently from run to run"
BATCH = "a batch vs its items alone: batched kernels sum in another order"
PATHS = "two code paths that compute the same math (another kernel, fusion or summation order)"
ORACLE = "the node vs an independent plain-torch reference of the same math"
