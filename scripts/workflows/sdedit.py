"""SDEdit examples: a strength sweep over the stroke painting, and SDEdit Sigmas in SamplerCustom."""
from __future__ import annotations

from workflow_builder import STROKES_FILE, Builder, common, stroke_painting

SWEEP = "SDEdit strength sweep"
SIGMAS = "SDEdit Sigmas in SamplerCustom"
PROMPT = "a photograph of a mountain lake at sunset, detailed, realistic"
NEGATIVE = "painting, flat colours, blurry, low quality"


def sdedit_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    common(b, PROMPT, NEGATIVE, STROKES_FILE)
    b.add(5, "GS_SDEdit", (460, 60), {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "euler",
                                      "scheduler": "normal", "strength": 0.5, "semantics": "paper", "repeats": 1,
                                      "strength_sweep": "0.3, 0.5, 0.7"},
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "image": (4, 0), "vae": (1, 2)},
          size=(340, 420))
    b.add(6, "VAEDecode", (840, 60), {}, {"samples": (5, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(7, "SaveImage", (840, 160), {"filename_prefix": "guided_synthesis/sdedit_sweep"}, {"images": (6, 0)},
          size=(560, 420))
    return b.workflow()


def sdedit_sigmas_workflow(node_classes) -> dict:
    """SDEdit Sigmas feeding SamplerCustom: the same SDEdit run built from ComfyUI's custom-sampling nodes,
    so any sampler, guider or noise of that family can be used. The guide's latent goes in as latent_image
    with add_noise on; the sigmas start at the noise level of the strength."""
    b = Builder(node_classes)
    common(b, PROMPT, NEGATIVE, STROKES_FILE)
    b.add(5, "VAEEncode", (460, 60), {}, {"pixels": (4, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(6, "GS_SDEditSigmas", (460, 160), {"scheduler": "normal", "steps": 30, "strength": 0.5,
                                             "semantics": "paper"}, {"model": (1, 0)}, size=(315, 180))
    b.add(7, "KSamplerSelect", (460, 390), {"sampler_name": "euler"}, size=(315, 60))
    b.add(8, "SamplerCustom", (820, 60), {"add_noise": True, "noise_seed": 42, "cfg": 7.5},
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "sampler": (7, 0), "sigmas": (6, 0),
           "latent_image": (5, 0)}, size=(330, 240))
    b.add(9, "VAEDecode", (820, 350), {}, {"samples": (8, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(10, "SaveImage", (1190, 60), {"filename_prefix": "guided_synthesis/sdedit_sigmas"}, {"images": (9, 0)},
          size=(400, 420))
    return b.workflow()


WORKFLOWS = {SWEEP: sdedit_workflow, SIGMAS: sdedit_sigmas_workflow}
INPUTS = {STROKES_FILE: stroke_painting}
