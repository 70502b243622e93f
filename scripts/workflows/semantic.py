"""CLIP semantic guidance examples: one per guidance type (text, a reference image's content, its style). Each
patches the MODEL with CLIP Semantic Guidance and samples it with a plain KSampler, next to the unguided
sample at the same seed."""
from __future__ import annotations

from workflow_builder import STROKES_FILE, Builder, stroke_painting

PROMPT = "a photograph of a lake below snowy mountains at sunset"
NEGATIVE = "blurry, low quality"
LOADER = {"architecture": "ViT-B-32", "checkpoint": "open_clip_model.safetensors", "precision": "auto",
          "download": False, "pretrained": "laion2b_s34b_b79k"}


def _workflow(node_classes, name: str, guidance: dict, reference: bool) -> dict:
    b = Builder(node_classes)
    b.add(1, "CheckpointLoaderSimple", (20, 60), {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, size=(315, 98))
    b.add(2, "CLIPTextEncode", (380, 40), {"text": PROMPT}, {"clip": (1, 1)}, size=(400, 130))
    b.add(3, "CLIPTextEncode", (380, 220), {"text": NEGATIVE}, {"clip": (1, 1)}, size=(400, 130))
    b.add(4, "GS_OpenCLIPLoader", (20, 220), dict(LOADER), size=(315, 180))
    inputs = {"model": (1, 0), "vae": (1, 2), "clip_model": (4, 0)}
    if reference:
        b.add(5, "LoadImage", (20, 440), {"image": STROKES_FILE}, size=(315, 320))
        inputs["reference_image"] = (5, 0)
    settings = {"text": "", "text_weight": 0.3, "image_weight": 0.3, "image_loss": "content", "cutouts": 4,
                "start_percent": 0.2, "end_percent": 0.7, "every": 1, "decoder": "auto", "step_mode": "normalised",
                **guidance}
    b.add(6, "GS_CLIPSemanticGuidance", (820, 40), settings, inputs, size=(360, 420))
    b.add(7, "EmptyLatentImage", (820, 500), {"width": 512, "height": 512, "batch_size": 1}, size=(315, 106))
    for node_id, model, x, prefix in ((8, (6, 0), 1220, f"guided_synthesis/{name}"),
                                      (11, (1, 0), 1220, f"guided_synthesis/{name}_unguided")):
        y = 40 if node_id == 8 else 560
        b.add(node_id, "KSampler", (x, y), {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                            "scheduler": "normal", "denoise": 1.0},
              {"model": model, "positive": (2, 0), "negative": (3, 0), "latent_image": (7, 0)}, size=(315, 262))
        b.add(node_id + 1, "VAEDecode", (x + 360, y), {}, {"samples": (node_id, 0), "vae": (1, 2)}, size=(210, 46))
        b.add(node_id + 2, "SaveImage", (x + 600, y), {"filename_prefix": prefix}, {"images": (node_id + 1, 0)},
              size=(360, 400))
    return b.workflow()


def text_workflow(node_classes) -> dict:
    return _workflow(node_classes, "semantic_text", {"text": "an oil painting in warm autumn colours"}, False)


def content_workflow(node_classes) -> dict:
    return _workflow(node_classes, "semantic_content", {"image_loss": "content"}, True)


def style_workflow(node_classes) -> dict:
    # style: middle to late steps (FreeDoM guides steps 30-70 of 100)
    return _workflow(node_classes, "semantic_style", {"image_loss": "style", "start_percent": 0.3,
                                                      "end_percent": 0.8}, True)


WORKFLOWS = {"semantic_text": text_workflow, "semantic_content": content_workflow, "semantic_style": style_workflow}
INPUTS = {STROKES_FILE: stroke_painting}
THUMBNAILS = {name: STROKES_FILE for name in WORKFLOWS}
