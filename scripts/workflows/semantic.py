"""CLIP semantic guidance examples: one per guidance type (text, a reference image's content, its style). Each
patches the MODEL with CLIP Semantic Guidance and samples it with a plain KSampler, next to the unguided
sample at the same seed."""
from __future__ import annotations

from workflow_builder import OPEN_CLIP_VIT_B_32, STROKES_FILE, Builder, checkpoint, prompts, stroke_painting

TEXT = "CLIP guidance towards a text"
CONTENT = "CLIP guidance towards image content"
STYLE = "CLIP guidance towards image style"
PROMPT = "a photograph of a lake below snowy mountains at sunset"
NEGATIVE = "blurry, low quality"
GUIDANCE_TEXT = "an oil painting in warm autumn colours"
LOADER = {"architecture": "ViT-B-32", "checkpoint": OPEN_CLIP_VIT_B_32["name"], "precision": "auto",
          "download": False, "pretrained": "laion2b_s34b_b79k"}


def _workflow(node_classes, prefix: str, guidance: dict, reference: bool) -> dict:
    b = Builder(node_classes)
    checkpoint(b)
    prompts(b, PROMPT, NEGATIVE)
    b.add(4, "GS_OpenCLIPLoader", (20, 530), dict(LOADER), size=(400, 180), models=[OPEN_CLIP_VIT_B_32])
    inputs = {"model": (1, 0), "vae": (1, 2), "clip_model": (4, 0)}
    if reference:
        b.add(5, "LoadImage", (20, 760), {"image": STROKES_FILE}, size=(400, 330))
        inputs["reference_image"] = (5, 0)
    settings = {"text": "", "text_weight": 0.3, "image_weight": 0.3, "image_loss": "content", "cutouts": 4,
                "start_percent": 0.2, "end_percent": 0.7, "every": 1, "decoder": "auto", "step_mode": "normalised",
                **guidance}
    b.add(6, "GS_CLIPSemanticGuidance", (460, 40), settings, inputs, size=(360, 420))
    b.add(7, "EmptyLatentImage", (460, 520), {"width": 512, "height": 512, "batch_size": 1}, size=(315, 106))
    for node_id, model, y, suffix in ((8, (6, 0), 40, "guided"), (11, (1, 0), 560, "unguided")):
        b.add(node_id, "KSampler", (860, y), {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                              "scheduler": "normal", "denoise": 1.0},
              {"model": model, "positive": (2, 0), "negative": (3, 0), "latent_image": (7, 0)}, size=(315, 262))
        b.add(node_id + 1, "VAEDecode", (1215, y), {}, {"samples": (node_id, 0), "vae": (1, 2)}, size=(210, 46))
        b.add(node_id + 2, "SaveImage", (1215, y + 90), {"filename_prefix": f"guided_synthesis/{prefix}_{suffix}"},
              {"images": (node_id + 1, 0)}, size=(360, 380))
    return b.workflow()


def text_workflow(node_classes) -> dict:
    return _workflow(node_classes, "semantic_text", {"text": GUIDANCE_TEXT}, False)


def content_workflow(node_classes) -> dict:
    return _workflow(node_classes, "semantic_content", {"image_loss": "content"}, True)


def style_workflow(node_classes) -> dict:
    # style: middle to late steps (FreeDoM guides steps 30-70 of 100)
    return _workflow(node_classes, "semantic_style", {"image_loss": "style", "start_percent": 0.3,
                                                      "end_percent": 0.8}, True)


WORKFLOWS = {TEXT: text_workflow, CONTENT: content_workflow, STYLE: style_workflow}
INPUTS = {STROKES_FILE: stroke_painting}
