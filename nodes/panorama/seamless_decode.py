"""Seamless Decode: a panorama latent decoded in overlapping tiles blended linearly (``circular``: 360 degrees)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ...guidance import panorama
from ..toolkit import host
from . import panorama_view
from .config import CATEGORY, LATENT_PX


def seamless_decode(vae, latent: torch.Tensor, tile: int, overlap: int, circular: bool) -> torch.Tensor:
    """Decode a raw latent [B,C,H,W] (or one-frame [B,C,1,H,W]) in tiles of ``tile`` latent cells blended over ``overlap`` cells
    (``panorama.tiles`` / ``blend_weights``); ``circular`` pads ``overlap`` wrapped columns on each side
    first and crops them after, so the left and right edges are decoded as neighbours (360 degrees)."""
    # at most the latent's width: the wrapped padding cannot be wider than the latent, and the crop below
    # removes exactly what was padded (an overlap wider than the latent would otherwise crop the image itself)
    pad = min(max(overlap, 1), latent.shape[-1]) if circular else 0
    z = panorama.circular_pad(latent, pad) if circular else latent
    height, width = z.shape[-2:]
    rows, cols = panorama.tiles(height, tile, overlap), panorama.tiles(width, tile, overlap)
    out = weights = None
    ratio = 1
    for top, bottom in rows:
        for left, right in cols:
            host.check_interrupt()
            image = vae.decode(z[..., top:bottom, left:right])
            if image.ndim == 5:
                image = image.reshape(-1, *image.shape[-3:])
            ratio = image.shape[1] // (bottom - top)
            if out is None:
                out = torch.zeros(image.shape[0], height * ratio, width * ratio, image.shape[-1])
                weights = torch.zeros(height * ratio, width * ratio)
            wy = panorama.blend_weights(height * ratio, (top * ratio, bottom * ratio), overlap * ratio)
            wx = panorama.blend_weights(width * ratio, (left * ratio, right * ratio), overlap * ratio)
            w = wy[:, None] * wx[None, :]
            out[:, top * ratio:bottom * ratio, left * ratio:right * ratio] += image.float().cpu() * w[..., None]
            weights[top * ratio:bottom * ratio, left * ratio:right * ratio] += w
    out = out / weights[..., None]
    if circular:
        out = out[:, :, pad * ratio:(width - pad) * ratio]
    return out.clamp(0, 1)


class SeamlessDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_SeamlessDecode",
            display_name="Seamless Decode (panorama)",
            category=CATEGORY,
            description="VAE decode for panoramas: in overlapping tiles blended linearly, so a very wide latent "
                        "decodes within the memory of one tile; 'circular' decodes a 360-degree panorama with "
                        "wrapped padding so its left and right edges meet without a seam.",
            inputs=[
                io.Latent.Input("samples", tooltip="The panorama latent (e.g. from SyncDiffusion Panorama Sampler)."),
                io.Vae.Input("vae", tooltip="The VAE to decode with (not modified)."),
                io.Int.Input("tile_size", default=512, min=64, max=8192, step=8,
                             tooltip="Tile size in pixels (a multiple of 8); memory grows with its square."),
                io.Int.Input("overlap", default=64, min=0, max=1024, step=8,
                             tooltip="Overlap between tiles in pixels (a multiple of 8), blended linearly; "
                                     "also the wrapped padding on each side when circular."),
                io.Boolean.Input("circular", default=False,
                                 tooltip="360-degree panorama: the left and right edges are decoded as "
                                         "neighbours (wrap padding), so the image tiles horizontally. The node "
                                         "then shows it in a 360-degree viewer (drag to turn, wheel to zoom)."),
            ],
            outputs=[io.Image.Output(tooltip="The decoded panorama.")],
        )

    @classmethod
    @host.validated
    def execute(cls, samples, vae, tile_size, overlap, circular) -> io.NodeOutput:
        host.check_multiple("tile_size", tile_size, LATENT_PX)
        host.check_multiple("overlap", overlap, LATENT_PX)
        if overlap * 2 > tile_size:
            raise ValueError(f"overlap ({overlap} px) must be at most half of tile_size ({tile_size} px)")
        latent = samples["samples"]
        # one-frame video-shaped latents [batch, channels, 1, height, width] (Qwen-Image's Wan 2.1 VAE) are images
        if not (latent.ndim == 4 or (latent.ndim == 5 and latent.shape[2] == 1)):
            raise ValueError(f"samples must be an image latent [batch, channels, height, width] (or a one-frame "
                             f"[batch, channels, 1, height, width]), got shape {tuple(latent.shape)}")
        image = seamless_decode(vae, latent, tile_size // LATENT_PX, overlap // LATENT_PX, circular)
        return io.NodeOutput(image, ui=panorama_view.panorama_ui(image) if circular else None)
