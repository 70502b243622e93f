"""GradOP+ examples: strokes to a realistic image beside an SDEdit branch for comparison, and the SAMPLER form
with region words in SamplerCustomAdvanced."""
from __future__ import annotations

from workflow_builder import STROKES_FILE, Builder, checkpoint, common, stroke_painting
from workflows.regions import negative_prompt, stroke_regions

STROKES = "GradOP+ strokes to photo beside SDEdit"
SAMPLER = "GradOP+ Sampler with region words"
GRADOP = {"seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform",
          "strength": 0.8, "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
          "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full", "mode": "GradOP+",
          "gamma": 0.001, "width": 0, "height": 0, "batch_size": 1}


def gradop_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    common(b, "a photograph of a mountain lake at sunset, detailed, realistic",
           "painting, flat colours, blurry, low quality", STROKES_FILE)
    b.add(5, "GS_GradOPPlus", (460, 40), dict(GRADOP),
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "vae": (1, 2), "strokes": (4, 0)},
          size=(340, 590))
    b.add(6, "VAEDecode", (840, 40), {}, {"samples": (5, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(7, "SaveImage", (840, 140), {"filename_prefix": "guided_synthesis/gradop_plus"}, {"images": (6, 0)},
          size=(400, 420))
    b.add(8, "PreviewImage", (1280, 40), {}, {"images": (5, 1)}, size=(360, 420))
    # The comparison the paper makes: SDEdit from the same noise level gives a flat, painting-like image.
    b.add(9, "GS_SDEdit", (460, 680),
          {"seed": 42, "steps": 50, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform",
           "strength": 0.8, "semantics": "diffusers", "repeats": 1, "strength_sweep": ""},
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "image": (4, 0), "vae": (1, 2)},
          size=(340, 420))
    b.add(10, "VAEDecode", (840, 620), {}, {"samples": (9, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(11, "SaveImage", (840, 720), {"filename_prefix": "guided_synthesis/sdedit_compare"},
          {"images": (10, 0)}, size=(400, 380))
    return b.workflow()


def gradop_sampler_workflow(node_classes) -> dict:
    """GradOP+ as a SAMPLER in SamplerCustomAdvanced, with the region words of Stroke Regions to Words: the
    patched MODEL and the prompt's CONDITIONING go into a CFGGuider, GradOP+ Sampler follows the strokes,
    BasicScheduler gives the ddim_uniform sigmas and an empty latent of the painting's size is the start."""
    b = Builder(node_classes)
    checkpoint(b, size=(315, 98))
    b.add(4, "LoadImage", (20, 200), {"image": STROKES_FILE}, size=(315, 320))
    stroke_regions(b, 5, stroke=(4, 0))
    negative_prompt(b, 3)
    b.add(6, "PreviewImage", (20, 760), {}, {"images": (5, 2)}, size=(340, 300))
    b.add(7, "GS_GradOPPlusSampler", (820, 40),
          {"sampler_name": "euler", "strength": 0.8, "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
           "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full", "mode": "GradOP+",
           "gamma": 0.001, "decoder_memory": "auto"},
          {"vae": (1, 2), "strokes": (4, 0)}, size=(340, 400))
    b.add(8, "RandomNoise", (820, 500), {"noise_seed": 42}, size=(315, 82))
    b.add(9, "CFGGuider", (820, 630), {"cfg": 7.5}, {"model": (5, 0), "positive": (5, 1), "negative": (3, 0)},
          size=(315, 98))
    b.add(10, "BasicScheduler", (820, 770), {"scheduler": "ddim_uniform", "steps": 30, "denoise": 1.0},
          {"model": (5, 0)}, size=(315, 106))
    # The painting's size (512 x 512); GradOP+ resizes the strokes to the latent's size otherwise.
    b.add(11, "EmptyLatentImage", (820, 920), {"width": 512, "height": 512, "batch_size": 1}, size=(315, 106))
    b.add(12, "SamplerCustomAdvanced", (1200, 40), {},
          {"noise": (8, 0), "guider": (9, 0), "sampler": (7, 0), "sigmas": (10, 0), "latent_image": (11, 0)},
          size=(272, 330))
    b.add(13, "VAEDecode", (1200, 420), {}, {"samples": (12, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(14, "SaveImage", (1200, 520), {"filename_prefix": "guided_synthesis/gradop_sampler_regions"},
          {"images": (13, 0)}, size=(400, 420))
    return b.workflow()


WORKFLOWS = {STROKES: gradop_workflow, SAMPLER: gradop_sampler_workflow}
INPUTS = {STROKES_FILE: stroke_painting}
