"""Panorama examples: a 512x2048 SyncDiffusion panorama (node form), and a 360-degree loop (the SAMPLER form in
SamplerCustom) with a circular Seamless Decode."""
from __future__ import annotations

from PIL import Image, ImageDraw

from workflow_builder import Builder

PANORAMA = {"batch_size": 1, "seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "ddim_uniform", "window_size": 0, "stride": 128, "sync_weight": 20.0, "decay": 0.95,
            "sync_steps": 10, "sync_every": 1, "anchor": -1, "lpips_net": "vgg", "loss_decoder": "auto",
            "unet_jacobian": "exact"}


def _panorama(loop: bool) -> dict:
    def build(node_classes) -> dict:
        b = Builder(node_classes)
        b.add(1, "CheckpointLoaderSimple", (20, 60), {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
              size=(315, 98))
        text = ("a 360 degree panorama of a snowy mountain range under a clear sky, photograph" if loop else
                "a photograph of a city skyline at dusk along a river, wide panorama, detailed")
        b.add(2, "CLIPTextEncode", (380, 40), {"text": text}, {"clip": (1, 1)}, size=(400, 160))
        b.add(3, "CLIPTextEncode", (380, 240), {"text": "blurry, low quality, text, frame"}, {"clip": (1, 1)},
              size=(400, 160))
        if not loop:  # the node form: one node does the whole panorama
            b.add(4, "GS_SyncDiffusion", (820, 40),
                  {"width": 2048, "height": 512, **PANORAMA, "loop": loop, "window_batch": 4},
                  {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "vae": (1, 2)}, size=(340, 620))
            latent = (4, 0)
        else:  # the SAMPLER form through SamplerCustom: composes with any model patch, LoRA or guider
            method = {k: v for k, v in PANORAMA.items()
                      if k not in ("batch_size", "seed", "steps", "cfg", "scheduler", "sampler_name")}
            b.add(4, "GS_SyncDiffusionSampler", (820, 40),
                  {"sampler_name": PANORAMA["sampler_name"], **method, "loop": True, "window_batch": 4},
                  {"vae": (1, 2)}, size=(340, 430))
            b.add(7, "EmptyLatentImage", (20, 220), {"width": 2048, "height": 512, "batch_size": 1}, size=(315, 106))
            b.add(8, "BasicScheduler", (20, 380), {"scheduler": "ddim_uniform", "steps": 50, "denoise": 1.0},
                  {"model": (1, 0)}, size=(315, 106))
            b.add(9, "SamplerCustom", (820, 520), {"add_noise": True, "noise_seed": 42, "cfg": 7.5},
                  {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "sampler": (4, 0), "sigmas": (8, 0),
                   "latent_image": (7, 0)}, size=(340, 240))
            latent = (9, 0)
        b.add(5, "GS_SeamlessDecode", (1200, 40), {"tile_size": 512, "overlap": 64, "circular": loop},
              {"samples": latent, "vae": (1, 2)}, size=(300, 130))
        b.add(6, "SaveImage", (1200, 220),
              {"filename_prefix": "guided_synthesis/panorama_360" if loop else "guided_synthesis/panorama"},
              {"images": (5, 0)}, size=(800, 300))
        return b.workflow()
    return build


def _thumbnail(loop: bool):
    def make():
        image = Image.new("RGB", (512, 128), (120, 160, 210))
        draw = ImageDraw.Draw(image)
        points = [(x, 80 - (25 if (x // 64) % 2 else 0)) for x in range(0, 513, 64)]
        draw.polygon([(0, 128), *points, (512, 128)], fill=(235, 240, 245) if loop else (60, 60, 80))
        if loop:
            draw.text((8, 8), "360", fill=(20, 20, 20))
        return image
    return make


WORKFLOWS = {"panorama_wide": _panorama(False), "panorama_360": _panorama(True)}
INPUTS = {}
THUMBNAILS = {"panorama_wide": _thumbnail(False), "panorama_360": _thumbnail(True)}
