"""Unit tests of guidance/sdedit.py and guidance/schedules.py (pure torch, no host)."""
import math
from typing import Callable

import pytest
import torch

from guidance import checks, schedules, sdedit
from devkit.tolerance import FORMULA, assert_close_across_paths


# Test-side references (the product needs only the forward conversions and the tabulated inverse):
def alpha_bar_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor:
    """VP cumulative alpha for a VE sigma: alpha_bar = 1 / (1 + sigma^2)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + sigma * sigma)


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


def karras_like(steps: int) -> torch.Tensor:
    sigma_min, sigma_max, rho = 0.03, 14.6, 7.0
    ramp = torch.linspace(0, 1, steps)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1)])


# An SD1-like VP schedule: t in [0, 1] -> sigma, monotone, sigma(1) = 14.6.
def time_to_sigma(t: float) -> float:
    if t <= 0:
        return 0.0
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    sig = ((1 - alphas) / alphas) ** 0.5
    position = min(max(t, 0.0), 1.0) * 999
    low = int(math.floor(position))
    high = min(low + 1, 999)
    w = position - low
    return float(torch.exp((1 - w) * sig[low].log() + w * sig[high].log()))


sigma_to_time = schedules.tabulated_inverse(time_to_sigma)


def test_tabulated_inverse_equals_bisection_and_calls_the_schedule_once_per_grid_point():
    calls = []

    def counted(t):
        calls.append(t)
        return time_to_sigma(t)

    inverse = schedules.tabulated_inverse(counted)
    assert len(calls) == schedules.INVERSE_TABLE_POINTS + 1  # the grid, plus the limit at t -> 0+
    sigmas = torch.cat([torch.logspace(math.log10(0.03), math.log10(14.5), 10000, dtype=torch.float64),
                        torch.tensor([0.0292, 1.0, 4.6917])])
    times = inverse(sigmas)
    assert len(calls) == schedules.INVERSE_TABLE_POINTS + 1  # 10003 sigmas inverted without calling it again
    for sigma, t in zip(sigmas[::997].tolist() + sigmas[-3:].tolist(), times[::997].tolist() + times[-3:].tolist()):
        # the schedule is log-linear between t = k/999, so the table's interpolation is exact there
        assert t == pytest.approx(invert_increasing(time_to_sigma, sigma), abs=1e-9)
    assert inverse(100.0) == 1.0 and inverse(0.0) == 0.0
    assert 0.0 < inverse(1e-6) <= 1e-12  # below sigma_min: just above t = 0, where the schedule starts
    assert isinstance(inverse(4.6917), float)


def test_paper_semantics_at_10000_steps_builds_its_schedule_in_one_pass():
    calls = []

    def counted(t):
        calls.append(t)
        return time_to_sigma(t)

    full = karras_like(10000)
    out = sdedit.paper_sigmas(full, 0.8, counted, schedules.tabulated_inverse(counted))
    assert len(out) == 10001 and float(out[0]) == pytest.approx(time_to_sigma(0.8))
    assert bool((out[:-1] > out[1:]).all())
    # one table plus one call per output level: not 60 bisection calls per level
    assert len(calls) <= schedules.INVERSE_TABLE_POINTS + 1 + 10001


def test_check_strength_bounds_name_the_input():
    assert checks.check_strength(1.0) == 1.0
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="strength must be in \\(0, 1\\]"):
            checks.check_strength(bad)


def test_parse_strengths():
    assert sdedit.parse_strengths("0.3, 0.5,0.7") == [0.3, 0.5, 0.7]
    assert sdedit.parse_strengths("0.2 0.4") == [0.2, 0.4]
    with pytest.raises(ValueError, match="strength_sweep has no strengths"):
        sdedit.parse_strengths(" , ,")
    with pytest.raises(ValueError, match="strength_sweep: 'abc' is not a number"):
        sdedit.parse_strengths("0.3, abc")
    with pytest.raises(ValueError, match="strength_sweep entry '1.5'"):
        sdedit.parse_strengths("0.3, 1.5")


def test_diffusers_start_index_matches_reference_rounding():
    # diffusers: int(50 * 0.8) = 40 steps run, start at index 10 (t = 781 with ddim_uniform).
    assert sdedit.diffusers_start_index(50, 0.8) == 10
    assert sdedit.diffusers_start_index(50, 1.0) == 0
    assert sdedit.diffusers_start_index(10, 0.05) == 10
    full = karras_like(50)
    out = sdedit.diffusers_sigmas(full, 0.8)
    assert len(out) == 41
    assert_close_across_paths(out, full[10:], rtol=1e-5, why=FORMULA)
    with pytest.raises(ValueError, match="runs no step"):
        sdedit.diffusers_sigmas(karras_like(10), 0.05)


def test_comfy_denoise_matches_ksampler_rule():
    calls = []

    def schedule(n):
        calls.append(n)
        return karras_like(n)

    out = sdedit.comfy_denoise_sigmas(schedule, 20, 0.5)
    assert calls == [40]
    assert len(out) == 21
    assert_close_across_paths(out, karras_like(40)[-21:], rtol=1e-5, why=FORMULA)


def test_paper_sigmas_start_at_t0_and_keep_steps():
    full = karras_like(30)
    for t0 in (0.2, 0.5, 0.8, 1.0):
        out = sdedit.paper_sigmas(full, t0, time_to_sigma, sigma_to_time)
        assert len(out) == len(full)
        assert out[-1] == 0
        assert math.isclose(float(out[0]), time_to_sigma(t0), rel_tol=1e-5)
        assert bool((out[:-1] > out[1:]).all()), "schedule must be strictly decreasing"


def test_paper_mapping_is_monotonic_and_reaches_both_ends():
    full = karras_like(20)
    strengths = torch.linspace(0.01, 1.0, 40).tolist()
    starts = [float(sdedit.paper_sigmas(full, s, time_to_sigma, sigma_to_time)[0]) for s in strengths]
    assert all(a < b for a, b in zip(starts, starts[1:]))
    assert math.isclose(starts[-1], time_to_sigma(1.0), rel_tol=1e-5)  # sigma_max
    assert starts[0] < 0.1  # close to sigma_min


def test_paper_uniform_schedule_becomes_uniform_in_t():
    # A schedule uniform in t compressed into [0, t0] stays uniform (the paper's dt = t0 / N).
    times = torch.linspace(1.0, 0.05, 10).tolist()
    full = torch.tensor([time_to_sigma(t) for t in times] + [0.0])
    out = sdedit.paper_sigmas(full, 0.5, time_to_sigma, sigma_to_time)
    out_times = [sigma_to_time(float(s)) for s in out[:-1]]
    steps = [a - b for a, b in zip(out_times, out_times[1:])]
    assert max(steps) - min(steps) < 1e-6
    assert math.isclose(out_times[0], 0.5, rel_tol=1e-5)


def test_select_sigmas_dispatch_and_errors():
    full = karras_like(10)
    assert_close_across_paths(sdedit.select_sigmas("diffusers", 0.5, full), full[5:], rtol=1e-5, why=FORMULA)
    with pytest.raises(ValueError, match="semantics must be one of"):
        sdedit.select_sigmas("other", 0.5, full)


def test_mask_checks_name_the_inputs():
    checks.check_mask_size((64, 64), (64, 64))
    with pytest.raises(ValueError, match="mask is 32x64 \\(HxW\\) but image is 64x64"):
        checks.check_mask_size((32, 64), (64, 64))
    with pytest.raises(ValueError, match="mask has a batch of 3; expected 1 or 2"):
        checks.check_mask_batch(3, 2)


def test_vp_ve_round_trip_and_alpha():
    x = torch.randn(2, 4, 8, 8)
    assert_close_across_paths(ve_from_vp(schedules.vp_from_ve(x, 4.69), 4.69), x, rtol=1e-5, why=FORMULA)
    # diffusers add_noise(x0, eps, t) = sqrt(ab) x0 + sqrt(1-ab) eps equals (x0 + sigma eps) / sqrt(1 + sigma^2)
    x0, eps, sigma = torch.randn(4), torch.randn(4), 4.692
    ab = alpha_bar_from_sigma(sigma).float()
    assert_close_across_paths(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, schedules.vp_from_ve(x0 + sigma * eps, sigma),
                              rtol=1e-5, why=FORMULA)


# --- select_sigmas: each semantics gets every argument it needs ------------------------------------

def linear_time_to_sigma(t: float) -> float:
    """A toy schedule sigma = 10 t, so the paper semantics can be worked out by hand."""
    return 10.0 * t


def linear_sigma_to_time(sigmas):
    return torch.as_tensor(sigmas, dtype=torch.float64) / 10.0


def test_select_sigmas_diffusers_counts_from_the_asked_for_steps():
    """A scheduler that builds 12 levels for 10 asked-for steps (ddim_uniform): the start index is
    steps - int(steps * strength) of the asked-for count, 10 - int(2.5) = 8, not 11 - int(2.75) = 9."""
    full = karras_like(11)  # 12 levels
    torch.testing.assert_close(sdedit.select_sigmas("diffusers", 0.25, full, steps=10), full[8:], rtol=0, atol=0)  # exact: a slice
    # without steps the count is len(full) - 1 = 11: start 11 - int(2.75) = 9 (a slice: exact)
    torch.testing.assert_close(sdedit.select_sigmas("diffusers", 0.25, full), full[9:], rtol=0, atol=0)  # exact: a slice
    # 10 steps (11 levels), default count: 10 - int(2.5) = 8
    ten = karras_like(10)
    torch.testing.assert_close(sdedit.select_sigmas("diffusers", 0.25, ten), ten[8:], rtol=0, atol=0)  # exact: a slice


def test_select_sigmas_comfy_passes_schedule_steps_and_strength():
    calls = []

    def schedule(n):
        calls.append(n)
        return karras_like(n)

    full = karras_like(10)
    out = sdedit.select_sigmas("comfy", 0.5, full, schedule=schedule)  # steps = len(full) - 1 = 10
    assert calls == [20]  # int(10 / 0.5): integer bookkeeping
    assert_close_across_paths(out, karras_like(20)[-11:], rtol=1e-5, why=FORMULA)
    calls.clear()
    out = sdedit.select_sigmas("comfy", 0.25, full, schedule=schedule, steps=6)
    assert calls == [24]  # int(6 / 0.25)
    assert_close_across_paths(out, karras_like(24)[-7:], rtol=1e-5, why=FORMULA)


def test_select_sigmas_paper_passes_both_schedule_maps():
    """sigma = 10 t: the levels 10, 6, 3, 1 sit at t = 1, .6, .3, .1; t0 = 0.6 scales them by 0.6."""
    full = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.0])
    out = sdedit.select_sigmas("paper", 0.6, full, time_to_sigma=linear_time_to_sigma,
                               sigma_to_time=linear_sigma_to_time)
    assert_close_across_paths(out, torch.tensor([6.0, 3.6, 1.8, 0.6, 0.0]), rtol=1e-5, why=FORMULA)


def test_select_sigmas_names_what_each_semantics_is_missing():
    full = karras_like(10)
    with pytest.raises(ValueError, match="^comfy semantics needs the schedule callable$"):
        sdedit.select_sigmas("comfy", 0.5, full)
    for t2s, s2t in ((None, linear_sigma_to_time), (linear_time_to_sigma, None), (None, None)):
        with pytest.raises(ValueError, match="^paper semantics needs time_to_sigma and sigma_to_time$"):
            sdedit.select_sigmas("paper", 0.5, full, time_to_sigma=t2s, sigma_to_time=s2t)
    with pytest.raises(ValueError, match="^semantics must be one of paper, diffusers, comfy, got 'Paper'$"):
        sdedit.select_sigmas("Paper", 0.5, full)


def test_comfy_denoise_uses_the_full_schedule_only_above_0_9999():
    """KSampler: ``denoise > 0.9999`` builds the plain schedule, anything else int(steps / denoise) steps.
    At 20000 steps the two differ: int(20000 / 0.9999) = 20002 and int(20000 / 0.99995) = 20001."""
    calls = []

    def schedule(n):
        calls.append(n)
        return torch.linspace(float(n), 0.0, n + 1)

    out = sdedit.comfy_denoise_sigmas(schedule, 20000, 0.99995)
    assert calls == [20000]  # integer bookkeeping
    torch.testing.assert_close(out, torch.linspace(20000.0, 0.0, 20001), rtol=0, atol=0)  # exact: returned as built
    calls.clear()
    out = sdedit.comfy_denoise_sigmas(schedule, 20000, 0.9999)
    assert calls == [20002]
    assert len(out) == 20001 and float(out[0]) == 20000.0  # the tail of 20002 .. 0: integers, exact in float32
    calls.clear()
    torch.testing.assert_close(sdedit.comfy_denoise_sigmas(schedule, 10, 1.0), torch.linspace(10.0, 0.0, 11),
                               rtol=0, atol=0)  # exact: returned as built
    assert calls == [10]


def test_mask_errors_name_both_sizes_in_height_by_width_order_and_accept_a_shared_mask():
    with pytest.raises(ValueError, match=r"^stroke_mask is 32x64 \(HxW\) but strokes is 48x80: the mask must"):
        checks.check_mask_size((32, 64), (48, 80), "stroke_mask", "strokes")
    checks.check_mask_batch(1, 3)  # one mask shared by the batch
    checks.check_mask_batch(3, 3)
    with pytest.raises(ValueError, match=r"^mask has a batch of 2; expected 1 or 3 \(the image batch\)$"):
        checks.check_mask_batch(2, 3)


def test_alpha_bar_is_computed_in_double_precision():
    sigma = 4.692
    ab = alpha_bar_from_sigma(sigma)
    assert ab.dtype == torch.float64
    assert_close_across_paths(ab, torch.tensor(1.0 / (1.0 + sigma * sigma), dtype=torch.float64),
                              rtol=1e-12, why=FORMULA)
    assert_close_across_paths(alpha_bar_from_sigma(torch.tensor([0.0, 1.0])),
                              torch.tensor([1.0, 0.5], dtype=torch.float64),
                              rtol=1e-12, why=FORMULA)


def test_diffusers_semantics_runs_a_single_step_when_that_is_all_strength_leaves():
    full = karras_like(10)
    # 10 - int(10 * 0.1) = 9: the last step only (a slice: exact)
    torch.testing.assert_close(sdedit.diffusers_sigmas(full, 0.1), full[9:], rtol=0, atol=0)  # exact: a slice
    with pytest.raises(ValueError, match=r"^strength 0.05 with 10 steps runs no step"):
        sdedit.diffusers_sigmas(full, 0.05)


def test_check_strength_returns_a_float_and_its_error_shows_the_value():
    value = checks.check_strength(1)
    assert value == 1.0 and isinstance(value, float)
    assert checks.check_strength(1e-9) == pytest.approx(1e-9, rel=1e-12)
    with pytest.raises(ValueError, match=r"^denoise must be in \(0, 1\], got 1.5$"):
        checks.check_strength(1.5, "denoise")
    with pytest.raises(ValueError, match=r"^strength must be in \(0, 1\], got inf$"):
        checks.check_strength(float("inf"))


def test_parse_strengths_accepts_semicolons_and_names_the_input_in_errors():
    assert sdedit.parse_strengths(" 0.25;0.5 ;\t0.75 ") == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match=r"^sweep has no strengths: give a comma-separated list such as "
                                         r"'0.3, 0.5, 0.7'$"):
        sdedit.parse_strengths("  ", "sweep")
    with pytest.raises(ValueError, match=r"^sweep: 'x' is not a number \(expected a list such as '0.3, 0.5, 0.7'\)$"):
        sdedit.parse_strengths("0.2, x", "sweep")
    with pytest.raises(ValueError, match=r"^sweep entry '0' must be in \(0, 1\], got 0.0$"):
        sdedit.parse_strengths("0.2, 0", "sweep")


def test_paper_sigmas_keep_a_schedule_without_a_final_zero_and_its_dtype():
    full = torch.tensor([10.0, 5.0, 1.0], dtype=torch.float64)
    out = sdedit.paper_sigmas(full, 0.5, linear_time_to_sigma, linear_sigma_to_time)
    assert out.dtype == torch.float64
    assert_close_across_paths(out, torch.tensor([5.0, 2.5, 0.5], dtype=torch.float64), rtol=1e-12, why=FORMULA)
    with pytest.raises(ValueError, match="^the schedule's first sigma maps to t = 0; cannot place t0 on it$"):
        sdedit.paper_sigmas(full, 0.5, linear_time_to_sigma, lambda s: torch.zeros_like(s))
    with pytest.raises(ValueError, match=r"^strength must be in \(0, 1\]"):
        sdedit.paper_sigmas(full, 0.0, linear_time_to_sigma, linear_sigma_to_time)


def test_diffusers_start_index_checks_the_strength():
    with pytest.raises(ValueError, match=r"^strength must be in \(0, 1\], got 1.2$"):
        sdedit.diffusers_start_index(10, 1.2)


def test_bisection_stays_inside_the_unit_interval_by_default():
    # a target above fn(1) ends at the top of [0, 1]
    assert invert_increasing(lambda u: u, 5.0) == pytest.approx(1.0, abs=1e-12)
    assert invert_increasing(lambda u: u * u, 0.25) == pytest.approx(0.5, abs=1e-12)
