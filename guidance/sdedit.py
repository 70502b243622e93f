"""SDEdit (Meng et al., ICLR 2022): start sampling from a noised guide at strength t0.

Three meanings of "strength" (docs/methods/sdedit.md section 2), all expressed as a SIGMAS
schedule that starts below the model's maximum noise level:

* ``paper``: t0 in (0, 1] is a point on the model's own noise schedule
  (sigma(t0) = ``percent_to_sigma(1 - t0)``); N steps then run from sigma(t0) to 0,
  spaced like the chosen scheduler but compressed into [0, t0] (the paper's
  Delta t = t0 / N for uniform schedulers).
* ``diffusers``: img2img semantics, start at index ``steps - int(steps * strength)`` of
  the full N-step schedule and run the remaining steps (equals KSamplerAdvanced's
  ``start_at_step``).
* ``comfy``: KSampler's ``denoise``, the last N+1 sigmas of an ``int(N / strength)``-step
  schedule.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from .checks import check_strength

SEMANTICS = ("paper", "diffusers", "comfy")


def parse_strengths(text: str, name: str = "strength_sweep") -> list[float]:
    """Parse a comma (or whitespace) separated list of strengths, each in (0, 1]."""
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if not parts:
        raise ValueError(f"{name} has no strengths: give a comma-separated list such as '0.3, 0.5, 0.7'")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not a number (expected a list such as '0.3, 0.5, 0.7')") from None
        values.append(check_strength(value, f"{name} entry {part!r}"))
    return values


def diffusers_start_index(steps: int, strength: float) -> int:
    """diffusers img2img: ``t_start = steps - min(int(steps * strength), steps)``."""
    check_strength(strength)
    return steps - min(int(steps * strength), steps)


def diffusers_sigmas(full_sigmas: torch.Tensor, strength: float, steps: int | None = None) -> torch.Tensor:
    """Tail of the full schedule from the diffusers start index (KSamplerAdvanced parity).

    ``steps`` is the step count asked for; a scheduler may build more levels than that (ComfyUI's
    ``ddim_uniform`` at step counts that do not divide 1000), and KSamplerAdvanced's ``start_at_step``
    counts from the asked-for number, so the start index does too.
    """
    steps = len(full_sigmas) - 1 if steps is None else int(steps)
    start = diffusers_start_index(steps, strength)
    if start >= len(full_sigmas) - 1:
        raise ValueError(f"strength {strength} with {steps} steps runs no step: "
                         f"diffusers semantics runs int(steps * strength) steps, raise steps or strength")
    return full_sigmas[start:].clone()


def comfy_denoise_sigmas(schedule: Callable[[int], torch.Tensor], steps: int, strength: float) -> torch.Tensor:
    """KSampler ``denoise``: the last ``steps + 1`` sigmas of an ``int(steps / strength)``-step schedule."""
    check_strength(strength)
    if strength > 0.9999:
        return schedule(steps).clone()
    return schedule(int(steps / strength))[-(steps + 1):].clone()


def paper_sigmas(full_sigmas: torch.Tensor, t0: float, time_to_sigma: Callable[[float], float],
                 sigma_to_time: Callable[[float], float]) -> torch.Tensor:
    """The paper's t0 semantics: start exactly at sigma(t0) and keep the scheduler's spacing in t.

    ``time_to_sigma`` maps t in [0, 1] (1 = pure noise) to the model's sigma; ``sigma_to_time``
    is its inverse, taking a tensor of sigmas (one vectorised call, e.g. :func:`schedules.tabulated_inverse`).
    The full schedule's timesteps are scaled so the first one lands on t0.
    """
    check_strength(t0)
    sigmas = full_sigmas.detach().to(torch.float64).cpu()
    tail_is_zero = float(sigmas[-1]) == 0.0
    levels = sigmas[:-1] if tail_is_zero else sigmas
    times = [float(t) for t in torch.as_tensor(sigma_to_time(levels)).reshape(-1)]
    if times[0] <= 0.0:
        raise ValueError("the schedule's first sigma maps to t = 0; cannot place t0 on it")
    scale = t0 / times[0]
    out = [time_to_sigma(t * scale) for t in times]
    out[0] = time_to_sigma(t0)
    if tail_is_zero:
        out.append(0.0)
    return torch.tensor(out, dtype=full_sigmas.dtype)


def select_sigmas(semantics: str, strength: float, full_sigmas: torch.Tensor,
                  schedule: Callable[[int], torch.Tensor] | None = None,
                  time_to_sigma: Callable[[float], float] | None = None,
                  sigma_to_time: Callable[[float], float] | None = None, steps: int | None = None) -> torch.Tensor:
    """Dispatch on the strength semantics; ``full_sigmas`` is the full schedule built for ``steps`` steps
    (default: its length - 1; pass the asked-for count, which a scheduler may not build exactly)."""
    steps = len(full_sigmas) - 1 if steps is None else int(steps)
    if semantics == "diffusers":
        return diffusers_sigmas(full_sigmas, strength, steps)
    if semantics == "comfy":
        if schedule is None:
            raise ValueError("comfy semantics needs the schedule callable")
        return comfy_denoise_sigmas(schedule, steps, strength)
    if semantics == "paper":
        if time_to_sigma is None or sigma_to_time is None:
            raise ValueError("paper semantics needs time_to_sigma and sigma_to_time")
        return paper_sigmas(full_sigmas, strength, time_to_sigma, sigma_to_time)
    raise ValueError(f"semantics must be one of {', '.join(SEMANTICS)}, got {semantics!r}")

