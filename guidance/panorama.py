"""SyncDiffusion (Lee et al., NeurIPS 2023) and MultiDiffusion (Bar-Tal et al., ICML 2023) panoramas, pure torch.

MultiDiffusion denoises overlapping windows of a wide latent independently and averages them per pixel.
SyncDiffusion nudges each window's own copy of its latent before that, along the gradient of a perceptual
(LPIPS) distance between the window's decoded x0 prediction and the anchor window's, so the windows agree
on one scene (docs/methods/panorama.md sections 1-4). Everything here works in latent pixels; nothing
imports ComfyUI: the denoiser, the decoder and the loss are callables given by the adapter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .loss_scale import fixed_scale_gradient

# The reference's shipped script: weight 20, decay 0.95, sync in the first 10 of 50 steps, every step.
DEFAULT_SYNC_WEIGHT = 20.0
DEFAULT_DECAY = 0.95
DEFAULT_SYNC_STEPS = 10


@dataclass(frozen=True)
class Window:
    """A window of the canvas in latent pixels. ``left + width`` may pass the canvas' right edge when the
    panorama is a 360-degree loop: the window then wraps around to column 0."""

    top: int
    left: int
    height: int
    width: int

    def wraps(self, canvas_width: int) -> bool:
        return self.left + self.width > canvas_width

    def columns(self, canvas_width: int) -> torch.Tensor:
        return torch.arange(self.left, self.left + self.width) % canvas_width


def _positions(size: int, window: int, stride: int) -> list[int]:
    """0, stride, 2*stride, ... and a last window flush with the edge (so any size is covered)."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    positions = [min(i * stride, size - window) for i in range(count)]
    return sorted(set(positions))


def plan_windows(height: int, width: int, window_height: int, window_width: int, stride_height: int,
                 stride_width: int, loop: bool = False) -> list[Window]:
    """Windows over a ``height`` x ``width`` latent canvas, in raster order (rows, then columns).

    Horizontal and vertical strides; the last window of each row/column is flush with the edge. With
    ``loop`` (a 360-degree panorama) windows continue past the right edge, wrapping to column 0, at the
    same stride until the next one would start where the first did: the seam between the last and the
    first column is then inside windows like any other column boundary (the reference's loop closure).
    """
    for name, value in (("window height", window_height), ("window width", window_width),
                        ("stride height", stride_height), ("stride width", stride_width)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1 latent pixel, got {value}")
    if stride_height > window_height or stride_width > window_width:
        raise ValueError(f"the stride ({stride_width}x{stride_height}) must not be larger than the window "
                         f"({window_width}x{window_height}): pixels between windows would never be denoised")
    if height < window_height or width < window_width:
        raise ValueError(f"the canvas ({width}x{height} latent pixels) is smaller than one window "
                         f"({window_width}x{window_height}); make the canvas larger or the window smaller")
    tops = _positions(height, window_height, stride_height)
    if loop:
        lefts = list(range(0, width, stride_width))
    else:
        lefts = _positions(width, window_width, stride_width)
    return [Window(top, left, window_height, window_width) for top in tops for left in lefts]


def crop(x: torch.Tensor, window: Window) -> torch.Tensor:
    """The window's part of ``x`` [..., H, W] (wrapping columns gathered around the seam)."""
    rows = x[..., window.top:window.top + window.height, :]
    canvas_width = x.shape[-1]
    if not window.wraps(canvas_width):
        return rows[..., window.left:window.left + window.width]
    return rows.index_select(-1, window.columns(canvas_width).to(x.device))


def coverage(windows: Sequence[Window], height: int, width: int, device=None) -> torch.Tensor:
    """How many windows cover each latent pixel [H, W] (every pixel must be covered at least once)."""
    count = torch.zeros(height, width, device=device)
    for window in windows:
        count[window.top:window.top + window.height].index_add_(
            1, window.columns(width).to(count.device), torch.ones(window.height, window.width, device=device))
    return count


def merge(values: Sequence[torch.Tensor], windows: Sequence[Window], shape: Sequence[int]) -> torch.Tensor:
    """MultiDiffusion's per-pixel average of the windows' values [B, C, h, w] on a canvas of ``shape``."""
    total = torch.zeros(shape, dtype=torch.float32, device=values[0].device)
    height, width = shape[-2], shape[-1]
    for value, window in zip(values, windows):
        columns = window.columns(width).to(total.device)
        band = total[..., window.top:window.top + window.height, :]
        band.index_add_(-1, columns, value.float())
    count = coverage(windows, height, width, device=total.device)
    if bool((count == 0).any()):
        raise ValueError("the windows leave some latent pixels uncovered")
    return (total / count).to(values[0].dtype)


def anchor_index(count: int, anchor: int = -1) -> int:
    """The anchor window: the reference's middle window (``count // 2``) for -1, else the index given."""
    if anchor == -1:
        return count // 2
    if not 0 <= anchor < count:
        raise ValueError(f"anchor must be -1 (the middle window) or a window index in 0..{count - 1}, got {anchor}")
    return anchor


def syncs_at(step: int, sync_steps: int, every: int = 1) -> bool:
    """The reference's rule: sync at step i when ``(i + 1) % every == 0 and i < sync_steps``."""
    return every >= 1 and (step + 1) % every == 0 and step < sync_steps


def sync_weight(step: int, weight: float = DEFAULT_SYNC_WEIGHT, decay: float = DEFAULT_DECAY) -> float:
    """w_i = weight * decay^i (the reference's schedule of the gradient step)."""
    return float(weight) * float(decay) ** step


def vp_scale(sigma: float, flow: bool = False) -> float:
    """Factor n^2 that maps the reference's step z <- z - w dL/dz on its VP latent z = x / n onto the sampler's x
    (x <- x - w n^2 dL/dx, since dL/dz = n dL/dx): n^2 = 1 + sigma^2 for x = x0 + sigma eps; for flow models
    (x = (1 - sigma) x0 + sigma eps) n^2 = (1 - sigma)^2 + sigma^2 (docs/methods/panorama.md section 4)."""
    if flow:
        return (1.0 - sigma) ** 2 + sigma ** 2
    return 1.0 + sigma * sigma


def nudge(x: torch.Tensor, grad: torch.Tensor, weight: float, sigma: float, flow: bool = False) -> torch.Tensor:
    """SyncDiffusion's step ``z <- z - w dL/dz`` in the reference's VP latent, as ``x <- x - w n^2 dL/dx``
    (:func:`vp_scale`: 1 + sigma^2, flow models (1 - sigma)^2 + sigma^2)."""
    return x - weight * vp_scale(sigma, flow) * grad.to(x.dtype)


def circular_pad(latent: torch.Tensor, columns: int) -> torch.Tensor:
    """Pad a latent [..., H, W] with ``columns`` wrapped columns on each side (for a seamless 360-degree decode)."""
    if columns <= 0:
        return latent
    columns = min(columns, latent.shape[-1])
    return torch.cat([latent[..., -columns:], latent, latent[..., :columns]], dim=-1)


def tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) spans of at most ``tile`` covering [0, length) with ``overlap`` between neighbours."""
    if length <= tile:
        return [(0, length)]
    step = max(1, tile - overlap)
    starts = _positions(length, tile, step)
    return [(start, start + tile) for start in starts]


def blend_weights(length: int, span: tuple[int, int], overlap: int) -> torch.Tensor:
    """1-D weights of one tile: linear ramps over the overlap at inner edges, 1 elsewhere (sum-normalised later)."""
    start, end = span
    weights = torch.ones(end - start)
    ramp = min(overlap, (end - start) // 2)
    if ramp > 0:
        rise = (torch.arange(ramp, dtype=torch.float32) + 1) / (ramp + 1)
        if start > 0:
            weights[:ramp] = rise
        if end < length:
            weights[-ramp:] = rise.flip(0)
    return weights


# --- the SyncDiffusion step and the MultiDiffusion merge over callables ---------------------------------
#
# ``denoise(xs, sigma, group) -> x0s`` is the CFG'd x0 prediction of a batch of window crops (window-major: the k
# windows listed in ``group``, each of batch B, give k*B items; ``group`` lets the adapter crop per-window
# inputs); ``denoise_grad`` is the same with autograd through it (or an approximation of its Jacobian); ``decode(x0s) -> images`` in [0, 1] with autograd; ``distance(images, anchor_images) ->
# per-item losses`` where ``anchor_images`` holds the anchor's B images (the distance repeats them per window).


def chunks(items: Sequence[int], size: int) -> list[list[int]]:
    """``items`` in consecutive groups of at most ``size`` (the window batches)."""
    size = max(1, int(size))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def synced_crops(x: torch.Tensor, windows: Sequence[Window], sigma: float, weight: float, anchor: int,
                 denoise, denoise_grad, decode, distance, batch: int = 1, flow: bool = False,
                 loss_scale: float = 1.0, on_batch=None, gradient=None) -> list[torch.Tensor]:
    """Each window's own copy of its crop of ``x``, nudged towards the anchor (SyncDiffusion, one step).

    The anchor's image ``decode(denoise(anchor crop))`` is computed once, without grad; every other window v
    gets ``x_v - weight (1 + sigma^2) dL/dx_v`` with ``L = distance(decode(denoise_grad(x_v)), anchor image)``
    (:func:`nudge`). Windows go through in groups of ``batch``; every op is per item, so the gradient of the
    summed loss is each window's own gradient. ``weight`` 0 returns the plain crops (MultiDiffusion).
    ``gradient(loss_fn, inputs)`` takes each group's gradient (guidance/loss_scale.py ``Gradient``; default a fixed
    ``loss_scale``: the loss multiplied for backward, the gradient divided after); when it returns None the
    group's windows keep their plain crops (the step is skipped for them, never a NaN nudge).
    ``on_batch(count)`` is called after each group (progress, interrupts).
    """
    crops = [crop(x, window) for window in windows]
    if weight == 0 or len(windows) < 2:
        return crops
    gradient = gradient or fixed_scale_gradient(loss_scale)
    items = x.shape[0]
    with torch.no_grad():
        anchor_image = decode(denoise(crops[anchor], sigma, [anchor])).detach()
    others = [index for index in range(len(windows)) if index != anchor]
    for group in chunks(others, batch):
        xs = torch.cat([crops[index].detach() for index in group]).requires_grad_(True)

        def loss_fn(xs=xs, group=group):
            return distance(decode(denoise_grad(xs, sigma, group)), anchor_image).float().sum()

        grads = gradient(loss_fn, [xs])
        if grads is not None:
            nudged = nudge(xs.detach(), grads[0], weight, sigma, flow)
            for position, index in enumerate(group):
                crops[index] = nudged[position * items:(position + 1) * items]
        if on_batch is not None:
            on_batch(len(group))
    return crops


def merged_x0(crops: Sequence[torch.Tensor], windows: Sequence[Window], shape: Sequence[int], sigma: float,
              denoise, batch: int = 1, on_batch=None) -> torch.Tensor:
    """MultiDiffusion: every window's (possibly nudged) crop denoised, in groups of ``batch``, and the x0
    predictions averaged per pixel (:func:`merge`)."""
    items = crops[0].shape[0]
    x0s: list[torch.Tensor] = []
    for group in chunks(range(len(windows)), batch):
        with torch.no_grad():
            out = denoise(torch.cat([crops[index] for index in group]), sigma, group)
        x0s.extend(out[position * items:(position + 1) * items] for position in range(len(group)))
        if on_batch is not None:
            on_batch(len(group))
    return merge(x0s, windows, shape)


def first_order_x0(x: torch.Tensor, x0_mean: torch.Tensor, x_mean: torch.Tensor, sigma: float,
                   sigma_next: float) -> torch.Tensor:
    """The x0 that makes one Euler/DDIM step of the global ``x`` from ``sigma`` to ``sigma_next`` land on the
    average of the windows' own steps (their nudged copies averaged: ``x_mean``; their x0s: ``x0_mean``).

    Euler: ``x' = D + r (x - D)`` with ``r = sigma_next / sigma``; averaging the windows' steps gives
    ``x0_mean + r (x_mean - x0_mean)``, which the global step reproduces with
    ``D = x0_mean + r / (1 - r) (x_mean - x)``. Without nudges ``x_mean == x`` and D is the plain average.
    """
    if sigma_next <= 0 or sigma_next >= sigma:
        return x0_mean
    ratio = sigma_next / (sigma - sigma_next)
    return x0_mean + ratio * (x_mean - x).to(x0_mean.dtype)
