"""GradOP+ example: strokes to a realistic image, beside an SDEdit branch for comparison."""
from __future__ import annotations

from workflow_builder import STROKES_FILE, Builder, common, stroke_painting


def gradop_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    common(b, "a photograph of a mountain lake at sunset, detailed, realistic",
           "painting, flat colours, blurry, low quality", STROKES_FILE)
    b.add(5, "GS_GradOPPlus", (820, 40),
          {"seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform",
           "strength": 0.8, "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
           "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full", "mode": "GradOP+", "gamma": 0.001,
           "width": 0, "height": 0, "batch_size": 1},
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "vae": (1, 2), "strokes": (4, 0)},
          size=(340, 560))
    b.add(6, "VAEDecode", (1200, 40), {}, {"samples": (5, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(7, "SaveImage", (1450, 40), {"filename_prefix": "guided_synthesis/gradop_plus"}, {"images": (6, 0)},
          size=(400, 420))
    b.add(8, "PreviewImage", (1200, 520), {}, {"images": (5, 1)}, size=(400, 300))
    # The comparison the paper makes: SDEdit from the same noise level gives a flat, painting-like image.
    b.add(9, "GS_SDEdit", (820, 640),
          {"seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform",
           "strength": 0.8, "semantics": "diffusers", "repeats": 1, "strength_sweep": ""},
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "image": (4, 0), "vae": (1, 2)},
          size=(340, 420))
    b.add(10, "VAEDecode", (1200, 900), {}, {"samples": (9, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(11, "SaveImage", (1450, 900), {"filename_prefix": "guided_synthesis/sdedit_compare"},
          {"images": (10, 0)}, size=(400, 420))
    return b.workflow()


WORKFLOWS = {"gradop_strokes": gradop_workflow}
INPUTS = {STROKES_FILE: stroke_painting}
THUMBNAILS = {"gradop_strokes": STROKES_FILE}
