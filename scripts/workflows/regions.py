"""Region-token attention example: words on the stroke painting's colour regions, into GradOP+ (as the
GradOP paper uses them), into KSampler (text-to-image at the painting's size) and into SDEdit."""
from __future__ import annotations

from workflow_builder import STROKES_FILE, Builder, checkpoint, stroke_painting

TITLE = "Region words on a painting"

PROMPT = ("a photograph of snowy mountains above a calm lake at sunset, a setting sun in the evening sky, "
          "a green meadow in front, detailed, realistic")
NEGATIVE = "painting, flat colours, blurry, low quality"
# The colours of workflow_builder.stroke_painting, top to bottom.
REGION_SPEC = "\n".join([
    "#6eaaeb: evening sky",
    "#fad250: setting sun",
    "#5f5a78: snowy mountains",
    "#2864aa: calm lake",
    "#46963c: green meadow",
])

# Stroke Regions sits in its own column with nothing below it: in the frontend it is REGIONS_SIZE once the
# palette editor shows the painting's five swatches, and after a run it also shows its region preview
# under the widgets (the newer frontend grows the node to hold it, the pinned one draws it below the node).
REGIONS_POS = (380, 40)
REGIONS_SIZE = (400, 540)


def stroke_regions(b: Builder, node_id: int, stroke) -> dict:
    """The Stroke Regions to Words node of the examples (the checkpoint is node 1)."""
    return b.add(node_id, "GS_StrokeRegions", REGIONS_POS,
                 {"prompt": PROMPT, "region_spec": REGION_SPEC, "strength": 0.4, "mode": "paint_with_words",
                  "start_percent": 0.0, "end_percent": 1.0, "missing_phrases": "append", "colour_tolerance": 24,
                  "min_region_percent": 0.2},
                 {"model": (1, 0), "clip": (1, 1), "stroke": stroke}, size=REGIONS_SIZE)


def negative_prompt(b: Builder, node_id: int) -> dict:
    """The negative CLIPTextEncode, under Load Image (node 4 at (20, 200), 320 high) in the first column."""
    return b.add(node_id, "CLIPTextEncode", (20, 570), {"text": NEGATIVE}, {"clip": (1, 1)}, size=(340, 130))


def regions_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    checkpoint(b, size=(315, 98))
    negative_prompt(b, 3)
    b.add(4, "LoadImage", (20, 200), {"image": STROKES_FILE}, size=(315, 320))
    stroke_regions(b, 5, stroke=(4, 0))
    b.add(13, "PreviewImage", (20, 750), {}, {"images": (5, 2)}, size=(340, 300))
    # A latent of the painting's size; with denoise 1.0 KSampler starts from pure noise (text-to-image).
    b.add(6, "VAEEncode", (820, 40), {}, {"pixels": (4, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(7, "KSampler", (820, 140), {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                      "scheduler": "normal", "denoise": 1.0},
          {"model": (5, 0), "positive": (5, 1), "negative": (3, 0), "latent_image": (6, 0)}, size=(315, 262))
    b.add(10, "GS_SDEdit", (820, 460), {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                        "scheduler": "normal", "strength": 0.6, "semantics": "paper", "repeats": 1,
                                        "strength_sweep": ""},
          {"model": (5, 0), "positive": (5, 1), "negative": (3, 0), "image": (4, 0), "vae": (1, 2)},
          size=(340, 420))
    b.add(14, "GS_GradOPPlus", (1200, 40),
          {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform",
           "strength": 0.8, "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
           "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full", "mode": "GradOP+",
           "gamma": 0.001, "width": 0, "height": 0, "batch_size": 1},
          {"model": (5, 0), "positive": (5, 1), "negative": (3, 0), "vae": (1, 2), "strokes": (4, 0)},
          size=(340, 590))
    # one column of results, top to bottom: text-to-image, SDEdit, GradOP+
    for decode_id, save_id, source, y, prefix in ((8, 9, 7, 40, "regions_txt2img"), (11, 12, 10, 420, "regions_sdedit"),
                                                  (15, 16, 14, 800, "regions_gradop")):
        b.add(decode_id, "VAEDecode", (1580, y), {}, {"samples": (source, 0), "vae": (1, 2)}, size=(210, 46))
        b.add(save_id, "SaveImage", (1580, y + 80), {"filename_prefix": f"guided_synthesis/{prefix}"},
              {"images": (decode_id, 0)}, size=(300, 240))
    return b.workflow()


WORKFLOWS = {TITLE: regions_workflow}
INPUTS = {STROKES_FILE: stroke_painting}
