"""Independent plain-torch references ("oracles") for the pack's nodes.

Everything here is written from the algorithms (README.md, docs/methods/*.md, the papers), never from the
pack's code: this module imports nothing from ``guidance`` or ``nodes``. The only host objects it touches are
building blocks that are not the pack's: the tiny UNet's ``diffusion_model`` (a plain forward), the VAE's
``first_stage_model.decode`` and the tokenizer of the tiny CLIP. The noise schedule, the samplers' schedules,
CFG, the Euler step, the inpainting blend, the SDEdit strength semantics, the GradOP+ loop, Adam, the painting
functions and the region-biased attention are all written out here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SD1_LATENT_SCALE = 0.18215  # Stable Diffusion 1.x latent scale factor (raw VAE latent x 0.18215 = model space)

# ----------------------------------------------------------------------------------------------
# The SD1 noise schedule (scaled-linear betas 0.00085 -> 0.012, 1000 steps) and its time <-> sigma maps


def sd1_sigma_table(timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """sigma_t = sqrt((1 - alphabar_t) / alphabar_t) for the scaled-linear beta schedule (float64)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


class NoiseSchedule:
    """The model's discrete schedule: sigma at fractional timesteps (log-linear between table entries)."""

    def __init__(self, table: torch.Tensor | None = None):
        self.table = (sd1_sigma_table() if table is None else table).double()
        self.log_table = self.table.log()
        self.log_table_f32 = self.log_table.float()  # the UNet's timestep lookup works in float32
        self.n = len(self.table)
        self.sigma_min = float(self.table[0])
        self.sigma_max = float(self.table[-1])

    def sigma_at(self, timestep: float) -> float:
        t = min(max(float(timestep), 0.0), self.n - 1.0)
        lo, hi = math.floor(t), math.ceil(t)
        w = t - lo
        return math.exp((1 - w) * float(self.log_table[lo]) + w * float(self.log_table[hi]))

    def nearest_timestep(self, sigma) -> int:
        """The UNet's integer timestep for a sigma: the table entry nearest in log sigma (in float32, so that a
        level exactly half-way between two entries resolves as the host resolves it)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        return int((log_sigma - self.log_table_f32).abs().argmin())

    # t in [0, 1], 1 = pure noise (t = timestep / 999)
    def time_to_sigma(self, t: float) -> float:
        if t >= 1.0:
            return self.sigma_max
        if t <= 0.0:
            return 0.0
        return min(max(self.sigma_at(t * (self.n - 1)), self.sigma_min), self.sigma_max)

    def sigma_to_time(self, sigma: float) -> float:
        sigma = float(sigma)
        if sigma <= 0.0:
            return 0.0
        if sigma >= self.sigma_max:
            return 1.0
        if sigma <= self.sigma_min:
            return 1e-12  # a positive sigma stays positive: "just above t = 0", i.e. sigma_min
        log_sigma = math.log(sigma)
        hi = int(torch.searchsorted(self.log_table, torch.tensor([log_sigma], dtype=torch.float64)))
        lo = hi - 1
        frac = (log_sigma - float(self.log_table[lo])) / float(self.log_table[hi] - self.log_table[lo])
        return (lo + frac) / (self.n - 1)

    # --- ComfyUI's schedulers, rewritten -----------------------------------------------------------
    def scheduler(self, name: str, steps: int) -> torch.Tensor:
        if name == "ddim_uniform":  # every (1000 // steps)-th level from t = 1 upwards, then 0
            stride = max(self.n // steps, 1)
            levels = [float(self.table[t]) for t in range(1, self.n, stride)][::-1]
        elif name == "normal":  # timesteps evenly spaced from 999 to 0, then 0
            if steps == 1:
                times = [self.n - 1.0]
            else:
                times = [(self.n - 1) * (1 - k / (steps - 1)) for k in range(steps)]
            levels = [self.sigma_at(t) for t in times]
        elif name == "karras":  # Karras et al. (2022), rho = 7
            rho = 7.0
            lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
            levels = [(hi + (k / (steps - 1) if steps > 1 else 0.0) * (lo - hi)) ** rho for k in range(steps)]
        elif name == "simple":
            stride = self.n / steps
            levels = [float(self.table[-(1 + int(k * stride))]) for k in range(steps)]
        else:
            raise ValueError(f"no reference for scheduler {name!r}")
        return torch.tensor(levels + [0.0], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# SDEdit strength semantics (README "What strength means")


def diffusers_start_index(steps: int, strength: float) -> int:
    """diffusers img2img: t_start = N - int(N * s) (int truncates: 7 x 0.55 = 3.85 runs 3 steps)."""
    return steps - min(int(steps * strength), steps)


def sdedit_sigmas(schedule: NoiseSchedule, scheduler: str, steps: int, strength: float, semantics: str) -> torch.Tensor:
    full = schedule.scheduler(scheduler, steps)
    if semantics == "diffusers":
        return full[diffusers_start_index(steps, strength):].clone()
    if semantics == "comfy":  # KSampler's denoise
        if strength > 0.9999:
            return full
        return schedule.scheduler(scheduler, int(steps / strength))[-(steps + 1):].clone()
    if semantics == "paper":
        levels = [float(s) for s in full[:-1]]
        times = [schedule.sigma_to_time(s) for s in levels]
        scale = strength / times[0]  # the scheduler's spacing in t, compressed into [0, t0]
        out = [schedule.time_to_sigma(t * scale) for t in times]
        out[0] = schedule.time_to_sigma(strength)  # exactly sigma(t0) on the model's schedule
        return torch.tensor(out + [0.0], dtype=torch.float32)
    raise ValueError(semantics)


# ----------------------------------------------------------------------------------------------
# The model: eps-prediction UNet + classifier-free guidance, and the Euler (= DDIM eta 0) sampler


class CFGDenoiser:
    """D(x, sigma) = uncond + cfg (cond - uncond) for an eps-prediction UNet, in model (scaled) space."""

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, cond: torch.Tensor, uncond: torch.Tensor,
                 cfg: float):
        self.unet, self.schedule, self.cond, self.uncond, self.cfg = unet, schedule, cond, uncond, float(cfg)
        self.calls = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        both = torch.cat([x, x])
        scaled = both / (sigma ** 2 + 1.0) ** 0.5  # the eps model's input scaling c_in
        timestep = torch.full((2 * b,), float(self.schedule.nearest_timestep(sigma)))
        context = torch.cat([self.cond.expand(b, -1, -1), self.uncond.expand(b, -1, -1)])
        eps = self.unet(scaled, timestep, context=context).float()
        denoised = both - eps * sigma  # x0 = x - sigma * eps
        cond, uncond = denoised.chunk(2)
        return uncond + (cond - uncond) * self.cfg


@dataclass
class Inpaint:
    """ComfyUI's KSamplerX0Inpaint, written out: outside the mask (m = 0) the model sees the guide noised to the
    current level (z0 + sigma * noise) and its prediction is replaced by the guide z0."""

    mask: torch.Tensor  # [B, C, h, w], 1 = regenerate
    latent: torch.Tensor  # z0 in model space
    noise: torch.Tensor

    def wrap(self, denoise):
        m, keep = self.mask, 1.0 - self.mask

        def inpainted(x, sigma):
            x_in = x * m + (self.latent + self.noise * sigma) * keep
            return denoise(x_in, sigma) * m + self.latent * keep
        return inpainted


def euler(denoise, x: torch.Tensor, sigmas: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
    """Euler steps x <- x + (x - D(x, s)) / s * (s' - s) from index ``start`` to ``end`` (DDIM with eta = 0)."""
    end = len(sigmas) - 1 if end is None else end
    for i in range(start, end):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        derivative = (x - denoise(x, sigma)) / sigma
        x = x + derivative * (nxt - sigma)
    return x


def start_noise(latent: torch.Tensor, noise: torch.Tensor, sigma0: float, sigma_max: float) -> torch.Tensor:
    """x = z0 + sigma0 * noise; at sigma_max the variance-preserving sqrt(1 + sigma^2) * noise."""
    sigma0 = torch.as_tensor(sigma0, dtype=torch.float32)
    if math.isclose(sigma_max, float(sigma0), rel_tol=1e-5) or float(sigma0) > sigma_max:
        return noise * torch.sqrt(1.0 + sigma0 ** 2.0) + latent
    return noise * sigma0 + latent


def seeded_noise(shape, seed: int) -> torch.Tensor:
    """KSampler's noise: one CPU generator seeded with ``seed``, randn over the whole batch."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed) % (1 << 64)),
                       dtype=torch.float32)


def sdedit(denoise, guide_raw: torch.Tensor, sigmas: torch.Tensor, seed: int, sigma_max: float,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """One SDEdit run: noise the guide to sigmas[0], Euler to 0; raw latents in and out."""
    z0 = guide_raw * SD1_LATENT_SCALE if bool((guide_raw != 0).any()) else guide_raw
    noise = seeded_noise(guide_raw.shape, seed)
    fn = denoise if mask is None else Inpaint(mask, z0, noise).wrap(denoise)
    x = start_noise(z0, noise, float(sigmas[0]), sigma_max)
    x = euler(fn, x, sigmas)
    return x / SD1_LATENT_SCALE


def latent_mask(mask: torch.Tensor, latent_shape) -> torch.Tensor:
    """A pixel mask [B, H, W] at the latent's size: bilinear, repeated over channels (ComfyUI's noise_mask)."""
    m = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=tuple(latent_shape[-2:]), mode="bilinear")
    m = m.expand(-1, latent_shape[1], -1, -1)
    return m.repeat(latent_shape[0] // m.shape[0], 1, 1, 1) if m.shape[0] != latent_shape[0] else m


# ----------------------------------------------------------------------------------------------
# GradOP+ painting functions (README: blur kernel 35 / sigma 7 at 512 px, median 15 at 512 px, palette)


def scale_to_512(height: int, width: int) -> float:
    return math.sqrt(height * width) / 512.0


def odd_at_most(value: float, minimum: int = 3) -> int:
    k = max(int(value), minimum)
    return k if k % 2 == 1 else k - 1


def blur_size(height: int, width: int) -> tuple[int, float]:
    sigma = 7.0 * scale_to_512(height, width)
    return odd_at_most(5.0 * sigma), sigma


def gaussian_blur(image: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """A dense (not separable) 2-D Gaussian, reflect border; [B, C, H, W]."""
    x = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k2 = (g[:, None] * g[None, :]).to(image.dtype)
    c = image.shape[1]
    pad = kernel // 2
    padded = F.pad(image, (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, k2.expand(c, 1, kernel, kernel), groups=c)


def median_size(height: int, width: int) -> int:
    return odd_at_most(15.0 * scale_to_512(height, width))


def median(image: torch.Tensor, kernel: int, margins=None) -> torch.Tensor:
    """The middle value of each kernel x kernel window (sorted), reflect border; the gradient reaches it."""
    pad = kernel // 2
    padded = F.pad(image, (pad, pad, pad, pad), mode="reflect")
    windows = padded.unfold(2, kernel, 1).unfold(3, kernel, 1)  # [B, C, H, W, k, k]
    flat = windows.reshape(*windows.shape[:4], kernel * kernel).sort(dim=-1).values
    if margins is not None:
        margins.record_median(flat.detach(), (kernel * kernel) // 2, pad)
    return flat[..., (kernel * kernel) // 2]


def stroke_palette(image: torch.Tensor, min_fraction: float = 0.002) -> torch.Tensor:
    """The colours of one flat-colour painting [3, H, W] as Stroke Regions to Words finds them (README: the
    exact painted shades, 0-255; a colour covering less than 0.2 % of the image is a speck and dropped).

    Written for paintings of well-separated flat colours in solid blocks (what the tests paint), where the
    regions extractor's clustering, edge bands and tolerance play no part; they have their own oracle in
    test_regions_oracle.py. Order does not matter to the soft quantisation.
    """
    pixels = (image.reshape(3, -1).t().float().clamp(0, 1) * 255).round()
    colours, counts = torch.unique(pixels, dim=0, return_counts=True)
    kept = colours[counts >= min_fraction * pixels.shape[0]]
    return (kept if len(kept) else colours[counts.argmax()][None]) / 255.0


def soft_palette(image: torch.Tensor, palette: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Each pixel -> sum_k softmax_k(-|p - c_k|^2 / T) c_k; [3, H, W] in and out."""
    pixels = image.reshape(3, -1).t()
    distance = ((pixels[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
    weights = torch.softmax(-distance / temperature, dim=1)
    return (weights @ palette).t().reshape(image.shape)


def painting_function(name: str, height: int, width: int, target: torch.Tensor, margins: Margins | None = None):
    if name == "gaussian blur":
        kernel, sigma = blur_size(height, width)
        return lambda img: gaussian_blur(img, kernel, sigma)
    if name == "median":
        kernel = median_size(height, width)
        return lambda img: median(img, kernel, margins)
    if name == "median + palette":
        kernel = median_size(height, width)
        palettes = [stroke_palette(t) for t in target]
        return lambda img: torch.stack([soft_palette(m, p) for m, p in zip(median(img, kernel, margins), palettes)])
    raise ValueError(name)


# ----------------------------------------------------------------------------------------------
# Adam and the GradOP+ / GradOP loops


def adam(z: torch.Tensor, loss_fn, steps: int, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
         losses: list | None = None) -> torch.Tensor:
    """Kingma & Ba's Adam (Algorithm 1), written out, on a fresh state: m, v = 0 at the start of every call.

    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t), arranged as
    (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), the m update as the interpolation m + (1 - b1)(g - m):
    the same numbers, rounded the way common implementations round them, so that float32 noise stays ~1e-8.
    ``loss_fn`` returns (objective, painting loss); the painting loss before each step goes to ``losses``.
    """
    b1, b2 = betas
    z = z.detach().clone().float()
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    for t in range(1, steps + 1):
        leaf = z.detach().requires_grad_(True)
        with torch.enable_grad():
            objective, paint = loss_fn(leaf)
            (grad,) = torch.autograd.grad(objective, leaf)
        if losses is not None:
            losses.append(float(paint.detach()))
        m = torch.lerp(m, grad, 1 - b1)
        v = v * b2 + (1 - b2) * grad * grad
        step_size = lr / (1 - b1 ** t)
        denominator = v.sqrt() / (1 - b2 ** t) ** 0.5 + eps
        z = z - step_size * (m / denominator)
    return z


class Margins:
    """How far the reference run stayed from the loss's branch points (the smallest distance seen).

    The painting loss is piecewise: clamp(x, 0, 1) has no gradient outside [0, 1], and the median passes its
    gradient to one window element. Where a value lies within float32 rounding (~1e-6 here) of such a branch, two
    correct implementations may take different branches, and Adam (whose step is ~lr * sign(g)) turns that into
    a whole-lr difference. A comparison with the node is meaningful only when these margins are well above the
    rounding: the tests assert it, so a case that happens to sit on a branch is reported as such, not as a bug.
    """

    def __init__(self):
        self.clamp = math.inf
        self.median = math.inf

    def record_clamp(self, raw: torch.Tensor) -> None:
        self.clamp = min(self.clamp, float(torch.minimum(raw.abs(), (raw - 1).abs()).min()))

    def record_median(self, flat_sorted: torch.Tensor, mid: int, pad: int) -> None:
        # windows touching the border hold reflected copies of one pixel: those exact ties are one source, skip them
        inner = flat_sorted[:, :, pad:flat_sorted.shape[2] - pad, pad:flat_sorted.shape[3] - pad]
        centre = inner[..., mid]
        inside = (centre > 0) & (centre < 1)  # a tie among clamped values carries no gradient either way
        gap = torch.minimum(centre - inner[..., mid - 1], inner[..., mid + 1] - centre)
        if bool(inside.any()):
            self.median = min(self.median, float(gap[inside].min()))


class KLDecode:
    """decode(z) = clamp((Dec(z / 0.18215) + 1) / 2, 0, 1) through a VAE's first_stage_model.decode, in a chosen dtype.

    ``model_space=True``: a decoder that takes model-space latents (TAESD from models/vae_approx), no unscaling.
    ``pool``: decode the 2x average-pooled latent (loss_resolution 'half').
    """

    def __init__(self, first_stage_model: torch.nn.Module, dtype=torch.float32, margins: Margins | None = None,
                 model_space: bool = False, pool: bool = False):
        self.module, self.dtype, self.margins = first_stage_model, dtype, margins
        self.model_space, self.pool = model_space, pool

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.pool:
            z = F.avg_pool2d(z, 2)
        raw = z if self.model_space else z / SD1_LATENT_SCALE
        image = (self.module.decode(raw.to(self.dtype)).float() + 1.0) * 0.5
        if self.margins is not None:
            self.margins.record_clamp(image.detach())
        return image.clamp(0.0, 1.0)


def painting_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """sum over images of mean((f(x) - y)^2), the mean over the mask's pixels (all 3 channels) with a mask."""
    error = (output - target) ** 2
    if mask is None:
        return error.flatten(1).mean(1).sum()
    weights = mask.expand_as(error)
    return ((error * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1.0)).sum()


@dataclass
class GradOPResult:
    latent: torch.Tensor  # raw VAE space
    optimised: list  # decode(z*) per iteration, [B, H, W, 3]
    levels: list
    sigmas: list  # the level of each optimisation
    losses: list  # per optimisation: (painting loss before the first Adam step, after the last)


def gradop(denoise, decode, sigmas: torch.Tensor, latent_shape, seed: int, target: torch.Tensor, painting_name: str,
           strength: float = 0.8, iterative_steps: int = 3, grad_steps: int = 12, lr: float = 0.1,
           mask: torch.Tensor | None = None, mode: str = "GradOP+", gamma: float = 1e-3,
           sigma_max: float = 14.6146, same_noise_every_iteration: bool = False,
           margins: Margins | None = None) -> GradOPResult:
    """The reference GradOP+ (Singh et al. 2023) from noise, in ComfyUI's sigma parametrisation.

    Levels: i0 = int(N (1 - strength)) in float; after the sampler steps i = i0 .. i0 + K - 1, at sigma_{i+1}:
    z = x / sqrt(1 + s^2); Adam (fresh) on sum_b mean((f(decode(z)) - y)^2); x = z* + s * eps with
    eps ~ N(0, 1) from a CPU generator seeded with seed + 1 + iteration. GradOP (reconstruction): a full text
    sample, Adam on the loss + gamma * mean((z - z_text)^2) at sigma 0, re-noise to sigma_{i0+1} with seed + 1,
    then sample from there.
    """
    n = len(sigmas) - 1
    i0 = int(n * (1.0 - strength))
    levels = [i + 1 for i in range(i0, i0 + iterative_steps)]
    height, width = target.shape[-2:]
    f = painting_function(painting_name, height, width, target, margins)
    noise = seeded_noise(latent_shape, seed)
    x = start_noise(torch.zeros(latent_shape), noise, float(sigmas[0]), sigma_max)
    images, losses, at = [], [], []

    def renoise_noise(iteration):
        return seeded_noise(latent_shape, seed + 1 + (0 if same_noise_every_iteration else iteration))

    def optimise(z, sigma, anchor=None):
        def loss(v):
            paint = painting_loss(f(decode(v)), target, mask)
            total = paint
            if anchor is not None and gamma > 0:
                total = total + gamma * ((v - anchor) ** 2).flatten(1).mean(1).sum()
            return total, paint
        trace = []
        z = adam(z, loss, grad_steps, lr, losses=trace)
        with torch.no_grad():
            image = decode(z)
            images.append(image.movedim(1, -1).clamp(0, 1))
            losses.append((trace[0], float(painting_loss(f(image), target, mask))))
        at.append(sigma)
        return z

    if mode == "GradOP+":
        for i in range(n):
            x = euler(denoise, x, sigmas, i, i + 1)
            if (i + 1) in levels and grad_steps:
                iteration = levels.index(i + 1)
                s = float(sigmas[i + 1])
                z = optimise(x / (1.0 + s ** 2) ** 0.5, s)
                x = z + s * renoise_noise(iteration)
    else:
        x = euler(denoise, x, sigmas)
        start = levels[0]
        if grad_steps:
            x = optimise(x, 0.0, anchor=x.clone())
        x = x + float(sigmas[start]) * renoise_noise(0)
        x = euler(denoise, x, sigmas, start)
    return GradOPResult(latent=x / SD1_LATENT_SCALE, optimised=images, levels=levels, sigmas=at, losses=losses)


# ----------------------------------------------------------------------------------------------
# Region-biased cross-attention (eDiff-I paint-with-words) and region masks


def paint_with_words(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias_mask: torch.Tensor,
                     strength: float, sigma: float) -> torch.Tensor:
    """A = softmax((QK^T + W) / sqrt(d)) V with W[p, j] = strength * log(1 + sigma) * max(QK^T) * M[p, j], the max
    per image over heads, query positions and keys (clamped at 0). q [B, Lq, h*d], k/v [B, Lk, h*d], M [Lq, Lk]."""
    b, lq, inner = q.shape
    d = inner // heads
    qh = q.double().reshape(b, lq, heads, d).permute(0, 2, 1, 3)
    kh = k.double().reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    vh = v.double().reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    scores = torch.einsum("bhqd,bhkd->bhqk", qh, kh)
    peak = scores.reshape(b, -1).max(dim=1).values.clamp_min(0).view(b, 1, 1, 1)
    w = strength * math.log(1.0 + sigma) * peak
    attn = torch.softmax((scores + w * bias_mask.double()) / math.sqrt(d), dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", attn, vh).permute(0, 2, 1, 3).reshape(b, lq, inner)


def plain_attention(q, k, v, heads):
    b, lq, inner = q.shape
    return paint_with_words(q, k, v, heads, torch.zeros(lq, k.shape[1]), 0.0, 0.0)

