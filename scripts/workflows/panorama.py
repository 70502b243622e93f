"""Panorama examples: a 512x2048 SyncDiffusion panorama (node form), and a 360-degree loop (the SAMPLER form in
SamplerCustom) with a circular Seamless Decode."""
from __future__ import annotations

from workflow_builder import LPIPS_VGG16, Builder, checkpoint, prompts

WIDE = "SyncDiffusion wide panorama"
LOOP = "SyncDiffusion 360 degree panorama"
PANORAMA = {"batch_size": 1, "seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "ddim_uniform", "window_size": 0, "stride": 128, "sync_weight": 20.0, "decay": 0.95,
            "sync_steps": 10, "sync_every": 1, "anchor": -1, "lpips_net": "vgg", "loss_decoder": "auto",
            "unet_jacobian": "exact"}


def _panorama(loop: bool) -> dict:
    def build(node_classes) -> dict:
        b = Builder(node_classes)
        checkpoint(b)
        text = ("a 360 degree panorama of a snowy mountain range under a clear sky, photograph" if loop else
                "a photograph of a city skyline at dusk along a river, wide panorama, detailed")
        prompts(b, text, "blurry, low quality, text, frame")
        # lpips_net "vgg" loads the VGG16 trunk from models/lpips: declared on the node and in the workflow
        if not loop:  # the node form: one node does the whole panorama
            b.add(4, "GS_SyncDiffusion", (460, 40),
                  {"width": 2048, "height": 512, **PANORAMA, "loop": loop, "window_batch": 4},
                  {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "vae": (1, 2)}, size=(340, 620),
                  models=[LPIPS_VGG16])
            latent = (4, 0)
        else:  # the SAMPLER form through SamplerCustom: composes with any model patch, LoRA or guider
            method = {k: v for k, v in PANORAMA.items()
                      if k not in ("batch_size", "seed", "steps", "cfg", "scheduler", "sampler_name")}
            b.add(4, "GS_SyncDiffusionSampler", (460, 40),
                  {"sampler_name": PANORAMA["sampler_name"], **method, "loop": True, "window_batch": 4},
                  {"vae": (1, 2)}, size=(340, 430), models=[LPIPS_VGG16])
            b.add(7, "EmptyLatentImage", (20, 530), {"width": 2048, "height": 512, "batch_size": 1}, size=(400, 106))
            b.add(8, "BasicScheduler", (20, 690), {"scheduler": "ddim_uniform", "steps": 50, "denoise": 1.0},
                  {"model": (1, 0)}, size=(400, 106))
            b.add(9, "SamplerCustom", (460, 530), {"add_noise": True, "noise_seed": 42, "cfg": 7.5},
                  {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "sampler": (4, 0), "sigmas": (8, 0),
                   "latent_image": (7, 0)}, size=(340, 240))
            latent = (9, 0)
        b.add(5, "GS_SeamlessDecode", (840, 40), {"tile_size": 512, "overlap": 64, "circular": loop},
              {"samples": latent, "vae": (1, 2)}, size=(300, 130))
        b.add(6, "SaveImage", (840, 230),
              {"filename_prefix": "guided_synthesis/panorama_360" if loop else "guided_synthesis/panorama_wide"},
              {"images": (5, 0)}, size=(880, 320))
        return b.workflow()
    return build


WORKFLOWS = {WIDE: _panorama(False), LOOP: _panorama(True)}
INPUTS = {}
