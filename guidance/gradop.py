"""GradOP+ and GradOP (Singh et al., CVPR 2023), as pure torch over tensors and callables.

GradOP+ (docs/methods/gradop.md sections 1 and 3): after some sampler steps, take the noisy latent to VP space,
optimise it with Adam so that f(decode(z)) matches the stroke painting y (f a painting
function, by default the reference's Gaussian blur), then re-noise it to the same level.
GradOP (docs/methods/gradop.md section 4, a reconstruction: the paper's base method was never released) optimises a
finished text-only sample with a proximity term and then runs SDEdit from it.

Nothing here imports ComfyUI: the decoder, the painting function and the progress hook are
callables passed in by the adapter (``nodes/gradop.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .checks import check_strength
from .loss_scale import Gradient, fixed_scale_gradient
from .palette import extract_palette
from .schedules import vp_from_ve

PAINTING_FUNCTIONS = ("gaussian blur", "median", "median + palette")
GRADOP_PLUS = "GradOP+"  # the paper's released method: optimise during sampling
GRADOP_RECONSTRUCTION = "GradOP (reconstruction)"  # its base method, rebuilt from the description
MODES = (GRADOP_PLUS, GRADOP_RECONSTRUCTION)

REFERENCE_SIZE = 512
REFERENCE_BLUR_SIGMA = 7.0  # kornia GaussianBlur2d((35, 35), (7, 7)) at 512x512
REFERENCE_MEDIAN_KERNEL = 15  # ours: no reference value; edge-preserving, 15 px at 512x512
PALETTE_TEMPERATURE = 0.01  # soft assignment width, in squared RGB distance (0..1 units)

Decode = Callable[[torch.Tensor], torch.Tensor]
Painting = Callable[[torch.Tensor], torch.Tensor]


# --- schedule ----------------------------------------------------------------------------

def optimisation_indices(num_steps: int, strength: float, iterative_steps: int) -> list[int]:
    """Indices into ``sigmas`` (length num_steps + 1) at which GradOP+ optimises.

    The reference starts at ``i0 = int(N * (1 - strength))`` computed in float (so 9, not 10, for
    N=50 and strength 0.8) and optimises after sampler steps i0 .. i0+K-1, each at the level the
    step reached, sigmas[i + 1]; steps after the second-to-last are never used (i < N - 1).
    """
    check_strength(strength)
    if iterative_steps < 1:
        raise ValueError(f"iterative_steps must be at least 1, got {iterative_steps}")
    start = int(num_steps * (1.0 - strength))
    available = max(0, num_steps - 1 - start)
    if iterative_steps > available:
        raise ValueError(
            f"iterative_steps ({iterative_steps}) is more than the sampler steps left after the start that "
            f"strength {strength} selects ({available} of {num_steps}): lower iterative_steps, raise strength "
            f"or raise steps")
    return [i + 1 for i in range(start, start + iterative_steps)]


# --- VP <-> sampler space ----------------------------------------------------------------

def to_vp(x: torch.Tensor, sigma: float, flow: bool = False) -> torch.Tensor:
    """The reference's latent z at this noise level (docs/README.md section 2).

    EPS/V models: ``z = x / sqrt(1 + sigma^2)``; flow (CONST) models: ``z = x / sqrt((1-s)^2 + s^2)``.
    """
    if flow:
        return x / math.sqrt((1.0 - sigma) ** 2 + sigma ** 2)
    return vp_from_ve(x, sigma)


def renoise(z: torch.Tensor, noise: torch.Tensor, sigma: float, flow: bool = False) -> torch.Tensor:
    """The reference's ``sqrt(a) z* + sqrt(1 - a) eps``, mapped to sampler space.

    EPS/V models: ``x = z* + sigma * eps``; flow models: ``x = (1 - sigma) z* + sigma * eps``.
    """
    if flow:
        return (1.0 - sigma) * z + sigma * noise
    return z + sigma * noise


# --- painting functions f --------------------------------------------------------------

def resolution_scale(height: int, width: int) -> float:
    """Image size relative to the reference's 512x512 (geometric mean of the sides)."""
    return math.sqrt(height * width) / REFERENCE_SIZE


def _odd_at_most(value: float, minimum: int = 3) -> int:
    size = max(int(value), minimum)
    return size if size % 2 else size - 1


def blur_parameters(height: int, width: int) -> tuple[int, float]:
    """(kernel, sigma) of the reference blur scaled to the image: 35 / 7 at 512, 69 / 14 at 1024."""
    sigma = REFERENCE_BLUR_SIGMA * resolution_scale(height, width)
    return _odd_at_most(5.0 * sigma), sigma


def median_kernel(height: int, width: int) -> int:
    return _odd_at_most(REFERENCE_MEDIAN_KERNEL * resolution_scale(height, width))


def _pad(image: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    # Reflect needs pad < size; tiny images fall back to replicate.
    mode = "reflect" if pad_h < image.shape[-2] and pad_w < image.shape[-1] else "replicate"
    return F.pad(image, (pad_w, pad_w, pad_h, pad_h), mode=mode)


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize [B,C,H,W]: area averaging when shrinking, bilinear otherwise (strokes, masks)."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    if height <= image.shape[-2] and width <= image.shape[-1]:
        return F.interpolate(image, size=(height, width), mode="area")
    return F.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)


def gaussian_kernel1d(kernel: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    coords = torch.arange(kernel, dtype=torch.float64, device=device) - (kernel - 1) / 2
    weights = torch.exp(-0.5 * (coords / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)


def gaussian_blur(image: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect border (the reference's kornia GaussianBlur2d)."""
    channels = image.shape[1]
    weights = gaussian_kernel1d(kernel, sigma, image.dtype, image.device)
    padded = _pad(image, kernel // 2, kernel // 2)
    rows = F.conv2d(padded, weights.view(1, 1, 1, kernel).expand(channels, 1, 1, kernel), groups=channels)
    return F.conv2d(rows, weights.view(1, 1, kernel, 1).expand(channels, 1, kernel, 1), groups=channels)


def median_filter(image: torch.Tensor, kernel: int, max_elements: int = 1 << 25) -> torch.Tensor:
    """Median over a kernel x kernel window (reflect border), in row chunks to bound memory.

    Differentiable: the gradient goes to the selected element (autograd keeps only indices).
    """
    pad = kernel // 2
    padded = _pad(image, pad, pad)
    batch, channels, height, width = image.shape
    rows_per_chunk = max(1, max_elements // max(1, batch * channels * width * kernel * kernel))
    chunks = []
    for top in range(0, height, rows_per_chunk):
        bottom = min(height, top + rows_per_chunk)
        window = padded[:, :, top:bottom + 2 * pad].unfold(2, kernel, 1).unfold(3, kernel, 1)
        chunks.append(window.reshape(*window.shape[:4], -1).median(dim=-1).values)
    return torch.cat(chunks, dim=2)


def soft_quantise(image: torch.Tensor, palettes: list[torch.Tensor],
                  temperature: float = PALETTE_TEMPERATURE) -> torch.Tensor:
    """Differentiable palette quantisation: each pixel becomes a softmax-weighted palette colour."""
    out = []
    for item, palette in zip(image, palettes):
        pixels = item.reshape(3, -1).t()
        distance = torch.cdist(pixels.float(), palette.to(pixels.device).float()) ** 2
        weights = torch.softmax(-distance / temperature, dim=1)
        out.append((weights @ palette.to(pixels.device).float()).t().reshape(item.shape).to(item.dtype))
    return torch.stack(out)


def painting_function(name: str, height: int, width: int, target: torch.Tensor | None = None) -> Painting:
    """The painting function f of the paper, sized for an image of ``height`` x ``width``.

    ``gaussian blur`` is the reference (G_{35,7} at 512 px, scaled with the image); ``median`` is
    edge-preserving; ``median + palette`` also snaps colours to the stroke palette (the reference
    README notes median plus quantisation is more faithful but slower). Needs ``target`` for the palette.
    """
    if name == "gaussian blur":
        kernel, sigma = blur_parameters(height, width)
        return lambda image: gaussian_blur(image, kernel, sigma)
    if name == "median":
        kernel = median_kernel(height, width)
        return lambda image: median_filter(image, kernel)
    if name == "median + palette":
        if target is None:
            raise ValueError("the 'median + palette' painting function needs the stroke image")
        kernel = median_kernel(height, width)
        # the stroke colours as Stroke Regions to Words finds them (exact painted shades, edges and specks dropped)
        palettes = [torch.tensor(extract_palette(image.movedim(0, -1)).colours, dtype=torch.float32) / 255.0
                    for image in target]
        return lambda image: soft_quantise(median_filter(image, kernel), palettes)
    raise ValueError(f"painting function must be one of {PAINTING_FUNCTIONS}, got {name!r}")


# --- the optimisation -------------------------------------------------------------------

def painting_loss(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image mean squared error [B] (the reference's mean MSE), inside ``mask`` [B,1,H,W] if given."""
    error = (output.float() - target.float()) ** 2
    if mask is None:
        return error.flatten(1).mean(dim=1)
    mask = mask.float()
    weight = (mask.expand_as(error)).flatten(1).sum(dim=1).clamp_min(1.0)
    return (error * mask).flatten(1).sum(dim=1) / weight


@dataclass
class OptimisationResult:
    z: torch.Tensor
    losses: list[float] = field(default_factory=list)  # painting loss before each step, then after the last
    loss_scale: float = 1.0  # the starting scale (a dynamic scaler may have lowered it)
    image: torch.Tensor | None = None  # decode(z*), [B,3,H,W]
    skipped: int = 0  # steps whose gradient stayed non-finite (z left unchanged)


# gradient(loss_fn, inputs) -> [d loss / d input] or None (skip the step): how a method takes a loss's
# gradient; nodes/ passes a dynamic loss scaler (nodes/gradients.LossScaler), pure callers a fixed scale.
def optimise_strokes(z: torch.Tensor, target: torch.Tensor, decode: Decode, painting: Painting, steps: int,
                     lr: float = 0.1, mask: torch.Tensor | None = None, anchor: torch.Tensor | None = None,
                     gamma: float = 0.0, loss_scale: float = 1.0,
                     on_step: Callable[[int, float], None] | None = None,
                     gradient: Gradient | None = None) -> OptimisationResult:
    """Adam on z for ``steps`` steps minimising ``sum_b mean MSE(f(decode(z)_b), y_b)`` (+ proximity).

    Implements ``gradop_plus_optim`` (Adam, default betas/eps, created afresh per call) and, with
    ``anchor`` and ``gamma``, GradOP's ``L(f(x), y) + gamma * d(x, x_text)`` with d the mean squared
    distance per latent element. ``decode`` maps z to an image [B,3,H,W] in [0,1] (clamped, as the
    reference does). ``gradient`` takes each step's gradient (:data:`Gradient`; default
    :func:`fixed_scale_gradient` of ``loss_scale``: the loss multiplied before backward and the gradient
    divided after, so a reduced-precision decoder does not underflow; Adam sees the unscaled gradient).
    When ``gradient`` returns None the step is skipped: z and Adam's state stay as they are
    (``result.skipped`` counts them). The sum over the batch keeps each image's reference scale (Adam is
    per-element). Needs autograd enabled; the inputs are copied, never modified.
    """
    if not torch.is_grad_enabled():
        raise RuntimeError("optimise_strokes needs autograd: call it with grad enabled (in nodes/: "
                           "gradients.grad_enabled(), with owned tensors)")
    gradient = gradient or fixed_scale_gradient(loss_scale)
    z = z.detach().clone().float().requires_grad_(True)
    target = target.detach().clone().float()
    mask = None if mask is None else mask.detach().clone().float()
    anchor = None if anchor is None else anchor.detach().clone().float()
    optimiser = torch.optim.Adam([z], lr=lr)
    result = OptimisationResult(z=z, loss_scale=float(loss_scale))
    paints: list[torch.Tensor] = []

    def objective() -> torch.Tensor:
        paint = painting_loss(painting(decode(z)), target, mask).sum()
        paints.append(paint.detach())
        total = paint
        if anchor is not None and gamma > 0:
            total = total + gamma * ((z - anchor) ** 2).flatten(1).mean(dim=1).sum()
        return total

    for step in range(1, steps + 1):
        optimiser.zero_grad(set_to_none=True)
        paints.clear()
        grads = gradient(objective, [z])
        if not paints:  # the gradient function ran no forward
            with torch.no_grad():
                objective()
        result.losses.append(float(paints[-1]))  # the last forward's (an fp32 retry's, if there was one)
        if grads is None:
            result.skipped += 1
        else:
            z.grad = grads[0]
            optimiser.step()
        if on_step is not None:
            on_step(step, result.losses[-1])
    with torch.no_grad():
        result.image = decode(z).detach()
        result.losses.append(float(painting_loss(painting(result.image), target, mask).sum()))
    result.z = z.detach()
    return result
