"""Host plumbing shared by the sampling nodes: schedules, noise, progress, previews, inputs."""
from __future__ import annotations

from typing import Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..guidance.schedules import invert_increasing

SAMPLER_NAMES = comfy.samplers.SAMPLER_NAMES
SCHEDULER_NAMES = comfy.samplers.SCHEDULER_NAMES


def schedule_fn(model, sampler_name: str, scheduler: str) -> Callable[[int], torch.Tensor]:
    """``steps -> sigmas`` exactly as KSampler builds them (incl. the discard-penultimate samplers)."""
    ksampler = comfy.samplers.KSampler(model, steps=1, device="cpu", sampler=sampler_name,
                                       scheduler=scheduler, denoise=1.0, model_options=model.model_options)
    return lambda steps: ksampler.calculate_sigmas(steps).cpu().float()


def time_sigma_maps(model) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(t -> sigma, sigma -> t) on the model's own noise schedule; t in [0, 1], 1 = pure noise."""
    sampling = model.get_model_object("model_sampling")
    sigma_max = float(sampling.sigma_max)
    sigma_min = float(sampling.sigma_min)

    def time_to_sigma(t: float) -> float:
        if t >= 1.0:
            return sigma_max
        if t <= 0.0:
            return 0.0
        return min(max(float(sampling.percent_to_sigma(1.0 - t)), sigma_min), sigma_max)

    def sigma_to_time(sigma: float) -> float:
        if sigma >= sigma_max:
            return 1.0
        return invert_increasing(time_to_sigma, sigma)

    return time_to_sigma, sigma_to_time


def prepare_noise(latent: dict, samples: torch.Tensor, seed: int) -> torch.Tensor:
    """KSampler's noise for ``seed`` (CPU generator, honours ``batch_index``)."""
    return comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))


def check_interrupt() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


class SamplingProgress:
    """One progress bar (with latent previews) over several sampler runs of one node."""

    def __init__(self, model, total_steps: int):
        self.total = max(int(total_steps), 1)
        self.done = 0
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED

    def callback(self) -> Callable:
        offset = self.done

        def callback(step, x0, x, total_steps):
            preview = None
            if self.previewer is not None:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
            self.pbar.update_absolute(min(offset + step + 1, self.total), self.total, preview)
        return callback

    def advance(self, steps: int) -> None:
        self.done += int(steps)
        self.pbar.update_absolute(min(self.done, self.total), self.total)


def image_to_rgb(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """IMAGE [B,H,W,C] -> [B,H,W,3]: RGBA drops alpha, greyscale is repeated."""
    if image.ndim != 4:
        raise ValueError(f"{name} must be an IMAGE tensor [batch, height, width, channels], got shape {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 4:
        return image[..., :3]
    if channels == 1:
        return image.expand(-1, -1, -1, 3)
    raise ValueError(f"{name} has {channels} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")


def mask_to_batch(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """MASK [H,W] or [B,H,W] (or [B,1,H,W]) -> [B,H,W]."""
    if mask.ndim == 2:
        return mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        return mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a MASK [batch, height, width], got shape {tuple(mask.shape)}")
    return mask
