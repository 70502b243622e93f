"""The 360-degree viewer's UI output (web/widgets/panorama_viewer.js shows it inside the node).

A node that produces a 360-degree panorama (GS_SyncDiffusion with ``loop``, GS_SeamlessDecode with ``circular``)
saves a preview of it to ComfyUI's temp folder, as PreviewImage does, and names the files under the UI key
``gs_panorama_360`` (a key of its own, so the frontend does not also draw the image as a flat preview). The
images are equirectangular in the horizontal direction: the width spans 360 degrees, the height
``360 * height / width`` degrees around the horizon.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

UI_KEY = "gs_panorama_360"
MAX_WIDTH = 4096  # the viewer shows about a quarter of the width at once: wider previews are downscaled


def _fit(images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1], at most MAX_WIDTH wide (area-averaged, aspect kept)."""
    width = images.shape[2]
    if width <= MAX_WIDTH:
        return images
    height = max(1, round(images.shape[1] * MAX_WIDTH / width))
    resized = torch.nn.functional.interpolate(images.movedim(-1, 1), size=(height, MAX_WIDTH), mode="area")
    return resized.movedim(1, -1)


def panorama_ui(images: torch.Tensor, approximate: bool = False) -> dict:
    """Save a batch of panoramas [B, H, W, 3] (values in [0, 1]) to temp; the ``ui`` dict for io.NodeOutput.

    ``approximate`` marks a preview that is not the decoded image (the sampler's latent colours)."""
    from comfy_api.latest import ui

    images = _fit(images.detach().float().cpu().clamp(0, 1))
    saved = ui.ImageSaveHelper.save_images(images, filename_prefix="gs_panorama_360", folder_type=io.FolderType.temp,
                                           cls=None, compress_level=1)
    height, width = int(images.shape[1]), int(images.shape[2])
    return {UI_KEY: [{**entry, "width": width, "height": height, "approximate": approximate} for entry in saved]}


def latent_colours(latent: torch.Tensor, latent_format) -> torch.Tensor | None:
    """The latent's approximate colours [B, H/8, W/8, 3] from the model's latent-to-RGB factors (what ComfyUI's
    latent previews show), or None when the model's latent format has none. ``latent`` is in VAE space (a
    sampler's output)."""
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None or latent.ndim != 4:
        return None
    factors = torch.tensor(factors, dtype=torch.float32)  # [channels, 3]
    if factors.shape != (latent.shape[1], 3):
        return None
    bias = getattr(latent_format, "latent_rgb_factors_bias", None)
    z = latent_format.process_in(latent.detach().float().cpu())
    rgb = torch.einsum("bchw,cr->bhwr", z, factors)
    if bias is not None:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    return ((rgb + 1) / 2).clamp(0, 1)


def latent_ui(latent: torch.Tensor, latent_format) -> dict | None:
    """The viewer's preview of a looped panorama latent: its approximate colours (no VAE decode); None when the
    model's latent format has no latent-to-RGB factors."""
    colours = latent_colours(latent, latent_format)
    return None if colours is None else panorama_ui(colours, approximate=True)
