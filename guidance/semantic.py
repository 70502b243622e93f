"""CLIP semantic guidance after SDG (Liu et al., WACV 2023), for latent diffusion models, pure torch.

SDG steers sampling with CLIP towards a text, a reference image's content or its style. Its reference
needs a noise-aware CLIP on pixel-space models; here the guidance acts on the decoded x0 prediction
with a standard CLIP (docs/methods/semantic.md sections 1-5): spherical distance of embeddings for text
and content, Gram matrices of intermediate visual features for style, several random cutouts for
stability, and a step on the post-CFG x0 that is normalised against the CFG correction (or SDG's
sigma^2-scaled form). Nothing here imports ComfyUI or open_clip: encoders are callables.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

STEP_MODES = ("normalised", "paper")
IMAGE_LOSSES = ("content", "style", "both")
# SDG's README weights (content 100, style 100, language 160) do not carry over: the normalised step's weight
# is a fraction of the CFG correction's size, and even the paper step differs in the loss (theta^2/2 vs cosine),
# in what is differentiated (latent x0 through a VAE vs pixel x_t) and in the style loss's scale
# (docs/methods/semantic.md section 3).


def spherical_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """theta^2 / 2 with theta = 2 arcsin(|u_hat - v_hat| / 2), the angle between the embeddings, per row."""
    u = F.normalize(u.float(), dim=-1)
    v = F.normalize(v.float(), dim=-1)
    half_chord = ((u - v).norm(dim=-1) / 2).clamp(0.0, 1.0)
    return 2.0 * torch.arcsin(half_chord) ** 2


def gram(features: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram matrices [B, C, C] = F F^T / (C * N) of features [B, C, H, W] or tokens [B, N, C].

    Per sample, unlike SDG's reference, whose (B*C) x (B*C) reshape mixes the images of a batch.
    """
    features = features.float()
    if features.ndim == 4:
        flat = features.flatten(2)  # [B, C, HW]
    elif features.ndim == 3:
        flat = features.transpose(1, 2)  # tokens [B, N, C] -> [B, C, N]
    else:
        raise ValueError(f"features must be [B, C, H, W] or [B, N, C], got shape {tuple(features.shape)}")
    channels, positions = flat.shape[1], flat.shape[2]
    return flat @ flat.transpose(1, 2) / (channels * positions)


def style_loss(features: Sequence[torch.Tensor], target_grams: Sequence[torch.Tensor],
               relative: bool = False) -> torch.Tensor:
    """Per-sample mean over layers of mean((G(f_k) - G_target_k)^2), [B]; targets [1 or B, C, C].

    ``relative``: each layer's error divided by mean(G_target_k^2), so the loss is scale-free (about 1 for
    unrelated images, 0 at the target) and adds to the spherical distances on a like footing; SDG instead
    multiplies its Gram MSE by 1e10.
    """
    losses = []
    for f, t in zip(features, target_grams):
        t = t.to(f.device).float()
        error = ((gram(f) - t) ** 2).flatten(1).mean(dim=1)
        if relative:
            error = error / (t ** 2).flatten(1).mean(dim=1).clamp_min(1e-30)
        losses.append(error)
    return torch.stack(losses).mean(dim=0)


def cutout_sizes(count: int, height: int, width: int, min_fraction: float, cut_power: float,
                 generator: torch.Generator) -> list[int]:
    """Side lengths u^cut_power * (max - min) + min of ``count`` random square cutouts."""
    largest = min(height, width)
    smallest = max(1, min(largest, int(largest * min_fraction)))
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    return [int(float(x) ** cut_power * (largest - smallest) + smallest) for x in u]


def make_views(image: torch.Tensor, size: int, cutouts: int, generator: torch.Generator,
               min_fraction: float = 0.5, cut_power: float = 1.0) -> torch.Tensor:
    """Views of ``image`` [B, 3, H, W] at the CLIP input size, differentiably: with ``cutouts`` = 0 one
    antialiased resize of the whole image, else ``cutouts`` random squares per image (the same squares
    for every image of the batch), each average-pooled to ``size``. Returns [V * B, 3, size, size],
    view-major (the B images of view 0, then of view 1, ...)."""
    if cutouts <= 0:
        return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    height, width = image.shape[-2:]
    views = []
    for side in cutout_sizes(cutouts, height, width, min_fraction, cut_power, generator):
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        piece = image[..., top:top + side, left:left + side]
        views.append(F.adaptive_avg_pool2d(piece, size) if side >= size
                     else F.interpolate(piece, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(views, dim=0)


def normalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP's input normalisation ``(x - mean) / std`` per channel, on [B, 3, H, W] in [0, 1] (no 8-bit rounding)."""
    mean_t = torch.tensor(mean, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    return (image - mean_t) / std_t


def view_mean(per_view: torch.Tensor, batch: int) -> torch.Tensor:
    """[V * B] view-major losses -> [B], the mean over each image's views."""
    return per_view.view(-1, batch).mean(dim=0)


def rms(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Root mean square per sample, [B, 1, 1, 1]. With ``weights`` ([1 or B, 1, h, w], e.g. a mask's coverage
    of each latent cell), the weighted RMS ``sqrt(sum(w x^2) / (C sum(w)))``: the RMS over the weighted cells
    only (0 where a sample's weights sum to 0)."""
    x = x.float()
    if weights is None:
        return x.pow(2).flatten(1).mean(dim=1).sqrt().view(-1, *([1] * (x.ndim - 1)))
    weights = weights.to(x.device, torch.float32).expand(x.shape[0], 1, *x.shape[2:])
    total = weights.flatten(1).sum(dim=1) * x.shape[1]
    square = (x.pow(2) * weights).flatten(1).sum(dim=1)
    mean = torch.where(total > 0, square / total.clamp_min(1e-30), torch.zeros_like(square))
    return mean.sqrt().view(-1, *([1] * (x.ndim - 1)))


def paper_scale(sigma: float | torch.Tensor, flow: bool = False) -> torch.Tensor:
    """SDG's step size on x0 per unit weight, ``sigma_ve^2`` (docs/methods/semantic.md section 3): ``sigma^2``
    in ComfyUI's VE sampler space (eps, v, EDM models); for flow models (``x = (1 - s) x0 + s eps``) the
    VE-equivalent ``(s / (1 - s))^2``, infinite at s >= 1 (pure noise: no step is defined there)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if not flow:
        return sigma ** 2
    signal = 1.0 - sigma
    return torch.where(signal > 0, (sigma / signal.clamp_min(1e-30)) ** 2, torch.full_like(sigma, float("inf")))


def guided_x0(denoised: torch.Tensor, grad: torch.Tensor, weight: float, sigma: float | torch.Tensor,
              mode: str = "normalised", cond_denoised: torch.Tensor | None = None,
              uncond_denoised: torch.Tensor | None = None, noisy: torch.Tensor | None = None,
              flow: bool = False, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Move the post-CFG x0 prediction down the loss gradient ``grad`` (dL/dx0).

    ``normalised`` (default): per sample, ``x0 - w * g / rms(g) * rms(cond - uncond)``, so one weight acts
    alike across noise levels and models; without a CFG correction (cfg 1) the size of the predicted noise,
    ``rms(noisy - x0)``, stands in for it. With ``weights`` (a mask's coverage per latent cell, [1 or B, 1,
    h, w]) both RMS are taken over the mask's cells (:func:`rms`), so inside the mask the step has ``w`` times
    the correction's size there, whatever the mask's area. ``paper``: SDG's unnormalised step,
    ``x0 - w * paper_scale(sigma, flow) * g`` (its mean shift of the VP sample, mapped onto x0).
    The formula's value is returned as it is, finite or not: the caller decides what a non-finite or absurd
    step means (nodes/: the shared step guard falls back to ``denoised`` and reports it).
    """
    if mode not in STEP_MODES:
        raise ValueError(f"step mode must be one of {STEP_MODES}, got {mode!r}")
    grad = grad.to(torch.float32)
    if mode == "paper":
        scale = paper_scale(sigma, flow).to(grad.device).reshape(-1, *([1] * (grad.ndim - 1)))
        step = weight * scale * grad
    else:
        reference = torch.zeros_like(rms(grad))
        if cond_denoised is not None and uncond_denoised is not None:
            reference = rms(cond_denoised - uncond_denoised, weights)
        if noisy is not None:
            fallback = rms(noisy - denoised, weights)
            reference = torch.where(reference > 0, reference, fallback)
        size = rms(grad, weights)
        step = torch.where(size > 0, grad / size.clamp_min(1e-30), torch.zeros_like(grad)) * reference * weight
    return (denoised.float() - step).to(denoised.dtype)


def step_indices(total_steps: int, start_percent: float, end_percent: float, every: int = 1) -> set[int]:
    """The sampler step indices that guide: inside [start, end] of the schedule (0 = first, noisiest step)
    and every ``every``-th of those, counted from the first guided step."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"start_percent ({start_percent}) and end_percent ({end_percent}) must satisfy "
                         f"0 <= start <= end <= 1")
    first = int(math.floor(start_percent * total_steps))
    last = min(total_steps - 1, int(math.ceil(end_percent * total_steps)) - 1)
    return set(range(first, last + 1, every))


def sigma_step_index(sigma: float, sample_sigmas: torch.Tensor) -> int | None:
    """Index of ``sigma`` in the run's schedule (the step being taken), or None when it is not one of its
    levels (a sampler's intermediate evaluation, e.g. Heun's second one): keys guidance to the step."""
    levels = sample_sigmas.detach().float().cpu()
    matches = torch.nonzero(torch.isclose(levels, torch.tensor(float(sigma)), rtol=1e-5, atol=1e-7)).flatten()
    return int(matches[0]) if len(matches) else None


def text_image_loss(image_embeddings: torch.Tensor, text_embedding: torch.Tensor | None,
                    content_embedding: torch.Tensor | None, batch: int,
                    text_weight: float, image_weight: float) -> torch.Tensor:
    """Per-image weighted sum [B] of the spherical distances of its views' embeddings [V * B, D] to the text
    and to the reference image's content embedding."""
    total = torch.zeros(batch, device=image_embeddings.device)
    if text_embedding is not None and text_weight:
        text = text_embedding.expand_as(image_embeddings)
        total = total + text_weight * view_mean(spherical_distance(image_embeddings, text), batch)
    if content_embedding is not None and image_weight:
        total = total + image_weight * view_mean(
            spherical_distance(image_embeddings, content_embedding.expand_as(image_embeddings)), batch)
    return total



def gated_indices(levels: torch.Tensor, sigma_start: float, sigma_end: float, every: int = 1) -> set[int]:
    """Step indices of a run's schedule ``levels`` (sample_sigmas, ending in 0) that guide: the steps whose
    sigma lies in [sigma_end, sigma_start] (ComfyUI's start/end percent mapped to sigmas), then every
    ``every``-th of those, counted from the first one. The final level (sigma 0) is never a step."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    values = levels.detach().float().cpu().tolist()[:-1]
    inside = [i for i, s in enumerate(values) if sigma_end - 1e-6 * abs(sigma_end) <= s <= sigma_start * (1 + 1e-6)]
    return set(inside[::every])


def style_layer_indices(depth: int) -> list[int]:
    """Early and middle transformer blocks whose tokens give the style Grams of a ViT tower of ``depth``
    blocks: about 1/6, 1/3 and 1/2 of the way in (blocks 2, 4, 6 of 12; 0 and 1 of 2)."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    return sorted({min(depth - 1, max(0, int(depth * f))) for f in (1 / 6, 1 / 3, 1 / 2)})


def masked_for_loss(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``image`` [B, 3, H, W] whose pixels outside ``mask`` ([1 or B, 1, H, W], 1 = guided) carry no gradient:
    the loss still sees the whole picture (its context), but only the region's pixels are moved."""
    mask = mask.to(image.device, image.dtype)
    return image * mask + image.detach() * (1.0 - mask)


def mask_weights(mask: torch.Tensor, latent_hw: Sequence[int]) -> torch.Tensor:
    """[1 or B, 1, h, w] fraction of each latent cell that ``mask`` ([1 or B, 1, H, W]) covers: the weights of
    the normalised step's RMS inside the mask (:func:`guided_x0`)."""
    return F.adaptive_avg_pool2d(mask.float(), tuple(int(v) for v in latent_hw))


def clip_loss_scale(reduced_precision: bool, latent_elements: int, total_weight: float) -> float:
    """The loss multiplier for CLIP guidance's backward: 1 in fp32; in reduced precision the number of x0
    elements per image divided by the total weight. The CLIP losses per unit weight are bounded means
    (theta^2/2 <= pi^2/2; the relative style loss about 1) whose gradient is read at x0, so per x0 element it
    is about loss / elements: the scale lifts it to order one, the division by the weights keeps large
    weights from overflowing. GradOP+'s per-pixel count (48 times larger for an 8x VAE) overflowed fp16.
    A dynamic scaler lowers it further when a gradient still overflows."""
    if not reduced_precision:
        return 1.0
    return float(latent_elements) / max(float(total_weight), 1e-6)


def latent_mask(mask: torch.Tensor, latent_hw: Sequence[int]) -> torch.Tensor:
    """[1 or B, 1, h, w] binary mask of the latent cells that ``mask`` ([1 or B, 1, H, W]) touches at all;
    the loss gradient is multiplied by it, so it is exactly zero on every cell outside the mask."""
    pooled = F.adaptive_max_pool2d(mask.float(), tuple(int(v) for v in latent_hw))
    return (pooled > 0).float()


def repeat_views(target: torch.Tensor, views: int, batch: int) -> torch.Tensor:
    """A per-image target [1 or B, ...] laid out like view-major view rows [V * B, ...]."""
    if target.shape[0] == 1:
        return target
    if target.shape[0] != batch:
        raise ValueError(f"a target batch of {target.shape[0]} does not match the image batch {batch}")
    return target.repeat(views, *([1] * (target.ndim - 1)))
