"""Plain-torch references for SDEdit and GradOP+ on flow-matching (CONST) models: tiny Flux.1 dev and SD3.5.

Like ``reference.py`` this imports nothing from ``guidance`` or ``nodes``. Written from the definitions:

* the flow marginal ``x_t = (1 - sigma) x0 + sigma eps`` (rectified flow; SD3 and Flux are trained on it), so the
  network predicts the velocity ``v = eps - x0`` and ``x0 = x_t - sigma v``;
* the families' shifted schedules: the time shift ``sigma(t) = s t / (1 + (s - 1) t)`` (SD3 and Z-Image s = 3,
  Flux.1 schnell s = 1) and the exponential shift ``sigma(t) = e^mu / (e^mu + 1/t - 1)`` (Flux.1 dev and Chroma,
  mu = 1.15), tabulated at t = k / T (T = 1000 for the time shift, 10000 for the exponential one), inverted in
  closed form;
* the latent formats' published constants: model space = (raw - shift) x scale (SD3 1.5305 / 0.0609,
  Flux 0.3611 / 0.1159, which Chroma and Z-Image share);
* the network's own time input: SD3 takes 1000 sigma, the others sigma (Flux multiplies by 1000 inside its
  embedding, Z-Image's NextDiT takes 1 - sigma inside); Flux.1 dev also takes the distilled guidance value, Chroma
  a guidance of 0, Z-Image the number of text tokens;
* GradOP+ on flow: the VP-equivalent latent ``z = x / sqrt((1 - s)^2 + s^2)`` (signal and noise weights with
  squares summing to 1) and its re-noise ``sqrt(abar) z* + sqrt(1 - abar) eps`` mapped back, i.e.
  ``(1 - s) z* + s eps``.

The only host objects used are the networks' plain forwards and the VAE's ``first_stage_model.decode``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .reference import Margins, adam, euler, latent_mask, painting_function, painting_loss, seeded_noise

# family -> (schedule kind, shift, table size T, time input per sigma, latent scale, latent shift, network inputs
# besides x, t and the context: "pooled" (y), "guidance" (the distilled guidance value; Chroma: 0), "num_tokens")
FAMILIES = {
    "flux_dev": ("exponential", 1.15, 10000, 1.0, 0.3611, 0.1159, ("pooled", "guidance")),
    "flux_schnell": ("time_shift", 1.0, 1000, 1.0, 0.3611, 0.1159, ("pooled",)),
    "sd35": ("time_shift", 3.0, 1000, 1000.0, 1.5305, 0.0609, ("pooled",)),
    "chroma": ("exponential", 1.15, 10000, 1.0, 0.3611, 0.1159, ("guidance",)),
    "z_image": ("time_shift", 3.0, 1000, 1.0, 0.3611, 0.1159, ("num_tokens",)),
}


class FlowSchedule:
    """sigma(t) of a shifted flow schedule, its closed-form inverse and ComfyUI's schedulers over its table."""

    def __init__(self, family: str):
        self.kind, self.shift, self.T, self.time_input, self.scale, self.latent_shift, self.inputs = FAMILIES[family]
        self.sigma_min = self.sigma(1.0 / self.T)
        self.sigma_max = self.sigma(1.0)  # = 1 for both shifts

    def sigma(self, t: float) -> float:
        if t <= 0.0:
            return 0.0
        if self.kind == "exponential":
            return math.exp(self.shift) / (math.exp(self.shift) + (1.0 / t - 1.0))
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def time(self, sigma: float) -> float:
        """The inverse of :meth:`sigma` (exact, no table)."""
        if sigma <= 0.0:
            return 0.0
        if self.kind == "exponential":
            return 1.0 / (1.0 + math.exp(self.shift) * (1.0 / sigma - 1.0))
        return sigma / (self.shift - (self.shift - 1.0) * sigma)

    # t in [0, 1], 1 = pure noise, clamped to the table's range as the host clamps its start levels
    def time_to_sigma(self, t: float) -> float:
        if t >= 1.0:
            return self.sigma_max
        if t <= 0.0:
            return 0.0
        return min(max(self.sigma(t), self.sigma_min), self.sigma_max)

    def scheduler(self, name: str, steps: int) -> torch.Tensor:
        if name == "simple":  # every (T / steps)-th table entry from the top
            stride = self.T / steps
            levels = [self.sigma((self.T - int(k * stride)) / self.T) for k in range(steps)]
        elif name == "normal":  # evenly spaced in the schedule's own time input from sigma_max to sigma_min
            start, end = self.sigma_max, self.sigma_min  # the time input divided by its multiplier is sigma
            levels = [self.sigma(start + (end - start) * k / (steps - 1)) for k in range(steps)] if steps > 1 \
                else [self.sigma(start)]
        else:
            raise ValueError(f"no flow reference for scheduler {name!r}")
        return torch.tensor(levels + [0.0], dtype=torch.float32)

    def to_model(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.latent_shift) * self.scale

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale + self.latent_shift


def sdedit_sigmas(schedule: FlowSchedule, scheduler: str, steps: int, strength: float, semantics: str) -> torch.Tensor:
    """The three strength semantics (docs/methods/sdedit.md section 2) on a flow schedule."""
    full = schedule.scheduler(scheduler, steps)
    if semantics == "diffusers":
        return full[steps - min(int(steps * strength), steps):].clone()
    if semantics == "comfy":
        if strength > 0.9999:
            return full
        return schedule.scheduler(scheduler, int(steps / strength))[-(steps + 1):].clone()
    if semantics == "paper":
        times = [schedule.time(float(s)) for s in full[:-1]]
        scale = strength / times[0]
        out = [schedule.time_to_sigma(t * scale) for t in times]
        out[0] = schedule.time_to_sigma(strength)
        return torch.tensor(out + [0.0], dtype=torch.float32)
    raise ValueError(semantics)


class FlowDenoiser:
    """D(x, sigma) = x - sigma v(x, sigma) after CFG, in model space. ``uncond`` None: cfg 1, one branch (ComfyUI
    skips the unconditional branch at cfg 1, so does this)."""

    def __init__(self, net: torch.nn.Module, schedule: FlowSchedule, cond, uncond=None, cfg: float = 1.0,
                 guidance: float | None = None):
        self.net, self.schedule, self.cond, self.uncond, self.cfg = net, schedule, cond, uncond, float(cfg)
        self.guidance = guidance

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        branches = [self.cond] if self.uncond is None or self.cfg == 1.0 else [self.cond, self.uncond]
        n = len(branches)
        xs = torch.cat([x] * n)
        context = torch.cat([c[0].expand(b, -1, -1) for c in branches])
        pooled = torch.cat([c[1].expand(b, -1) for c in branches])
        extra = {}
        if "pooled" in self.schedule.inputs:
            extra["y"] = pooled
        if "guidance" in self.schedule.inputs:
            extra["guidance"] = torch.full((n * b,), float(self.guidance or 0.0))
        if "num_tokens" in self.schedule.inputs:
            extra["num_tokens"] = context.shape[1]
        t = torch.full((n * b,), float(sigma) * self.schedule.time_input)
        v = self.net(xs, t, context=context, **extra).float()
        denoised = xs - v * sigma
        if n == 1:
            return denoised
        cond, uncond = denoised.chunk(2)
        return uncond + (cond - uncond) * self.cfg


@dataclass
class FlowInpaint:
    """KSamplerX0Inpaint on a flow model: outside the mask the model sees the guide on the flow marginal
    (1 - sigma) z0 + sigma noise, and its prediction is replaced by z0."""

    mask: torch.Tensor
    latent: torch.Tensor
    noise: torch.Tensor

    def wrap(self, denoise):
        m, keep = self.mask, 1.0 - self.mask

        def inpainted(x, sigma):
            x_in = x * m + ((1.0 - sigma) * self.latent + sigma * self.noise) * keep
            return denoise(x_in, sigma) * m + self.latent * keep
        return inpainted


def flow_noise(z0: torch.Tensor, noise: torch.Tensor, sigma0: float) -> torch.Tensor:
    """The start of an SDEdit run on a flow model: the marginal (1 - sigma0) z0 + sigma0 eps (no max-denoise
    special case: at sigma0 = 1 it is pure noise already)."""
    return (1.0 - sigma0) * z0 + sigma0 * noise


def sdedit(denoise, schedule: FlowSchedule, guide_raw: torch.Tensor, sigmas: torch.Tensor, seed: int,
           mask: torch.Tensor | None = None, ve_noise: bool = False) -> torch.Tensor:
    """One SDEdit run on a flow model; raw latents in and out. ``ve_noise``: the wrong (VE, x0 + sigma eps) start,
    for the tests' can-it-fail checks."""
    z0 = schedule.to_model(guide_raw)
    noise = seeded_noise(guide_raw.shape, seed)
    fn = denoise if mask is None else FlowInpaint(mask, z0, noise).wrap(denoise)
    s0 = float(sigmas[0])
    x = z0 + s0 * noise if ve_noise else flow_noise(z0, noise, s0)
    return schedule.to_raw(euler(fn, x, sigmas))


# ----------------------------------------------------------------------------------------------
# GradOP+ on a flow model


def vp_norm(sigma: float) -> float:
    """sqrt((1 - s)^2 + s^2): x / this is the VP-equivalent latent."""
    return math.sqrt((1.0 - sigma) ** 2 + sigma ** 2)


class FlowDecode:
    """decode(z) = clamp((Dec(z / scale + shift) + 1) / 2, 0, 1) through the VAE's first_stage_model."""

    def __init__(self, first_stage_model, schedule: FlowSchedule, margins: Margins | None = None):
        self.module, self.schedule, self.margins = first_stage_model, schedule, margins

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        image = (self.module.decode(self.schedule.to_raw(z)).float() + 1.0) * 0.5
        if self.margins is not None:
            self.margins.record_clamp(image.detach())
        return image.clamp(0.0, 1.0)


@dataclass
class FlowGradOPResult:
    latent: torch.Tensor
    optimised: list
    levels: list
    sigmas: list
    losses: list


def gradop_plus(denoise, decode, schedule: FlowSchedule, sigmas: torch.Tensor, latent_shape, seed: int,
                target: torch.Tensor, painting_name: str = "gaussian blur", strength: float = 0.8,
                iterative_steps: int = 2, grad_steps: int = 1, lr: float = 0.1, margins: Margins | None = None,
                variant: str = "flow") -> FlowGradOPResult:
    """GradOP+ from an empty latent on a flow model. ``variant``: 'flow' (the method), or the wrong formulas the
    tests rule out: 've_renoise' (x = z* + s eps), 'unit_vp' (z = x / sqrt(1 + s^2), re-noise as the VP model)."""
    n = len(sigmas) - 1
    i0 = int(n * (1.0 - strength))
    levels = [i + 1 for i in range(i0, i0 + iterative_steps)]
    height, width = target.shape[-2:]
    f = painting_function(painting_name, height, width, target, margins)
    x = flow_noise(torch.zeros(latent_shape), seeded_noise(latent_shape, seed), float(sigmas[0]))
    images, losses, at = [], [], []
    for i in range(n):
        x = euler(denoise, x, sigmas, i, i + 1)
        if (i + 1) in levels and grad_steps:
            iteration = levels.index(i + 1)
            s = float(sigmas[i + 1])
            norm = math.sqrt(1.0 + s ** 2) if variant == "unit_vp" else vp_norm(s)
            z = x / norm

            def loss(v):
                paint = painting_loss(f(decode(v)), target, None)
                return paint, paint
            trace = []
            z = adam(z, loss, grad_steps, lr, losses=trace)
            with torch.no_grad():
                image = decode(z)
                images.append(image.movedim(1, -1).clamp(0, 1))
                losses.append((trace[0], float(painting_loss(f(image), target, None))))
            at.append(s)
            eps = seeded_noise(latent_shape, seed + 1 + iteration)
            if variant == "flow":
                x = (1.0 - s) * z + s * eps
            else:
                x = z + s * eps
    return FlowGradOPResult(latent=schedule.to_raw(x), optimised=images, levels=levels, sigmas=at, losses=losses)


__all__ = ["FAMILIES", "FlowSchedule", "sdedit_sigmas", "FlowDenoiser", "FlowInpaint", "flow_noise", "sdedit",
           "vp_norm", "FlowDecode", "gradop_plus", "latent_mask"]
