"""Flux.1 dev examples, one per capability: SDEdit, GradOP+, CLIP guidance, a SyncDiffusion panorama and region
words on a painting (the bias on Flux's joint attention). Each loads the fp8 all-in-one checkpoint with Load
Checkpoint, sets the distilled guidance with FluxGuidance and samples at cfg 1 (Flux.1 dev is guidance-distilled:
the negative prompt has no effect there); the gradient methods decode through the fast TAEF1 decoder
(decoder 'taesd' reads taef1_decoder from models/vae_approx)."""
from __future__ import annotations

from workflow_builder import (FLUX1_DEV_FP8, LPIPS_VGG16, OPEN_CLIP_VIT_B_32, STROKES_FILE, TAEF1_DECODER, Builder,
                              stroke_painting)
from workflows.regions import REGION_SPEC, REGIONS_POS, REGIONS_SIZE
from workflows.regions import PROMPT as REGIONS_PROMPT
from workflows.semantic import LOADER

SDEDIT = "SDEdit on Flux dev"
GRADOP = "GradOP+ strokes to photo on Flux dev"
SEMANTIC = "CLIP guidance on Flux dev"
PANORAMA = "SyncDiffusion panorama on Flux dev"
REGIONS = "Region words on a painting on Flux dev"
PROMPT = "a photograph of a mountain lake at sunset, detailed, realistic"
SAMPLING = {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}


def flux_common(b: Builder, prompt: str) -> None:
    """First column: Load Checkpoint (node 1, the fp8 Flux.1 dev file), the prompt (2), an empty negative (3,
    ignored at cfg 1) and, beside them, FluxGuidance (10) on the prompt."""
    b.add(1, "CheckpointLoaderSimple", (20, 60), {"ckpt_name": FLUX1_DEV_FP8["name"]}, size=(400, 98),
          models=[FLUX1_DEV_FP8])
    b.add(2, "CLIPTextEncode", (20, 200), {"text": prompt}, {"clip": (1, 1)}, size=(400, 130))
    b.add(3, "CLIPTextEncode", (20, 370), {"text": ""}, {"clip": (1, 1)}, size=(400, 110))
    b.add(10, "FluxGuidance", (460, 60), {"guidance": 3.5}, {"conditioning": (2, 0)}, size=(315, 58))


def conditioning() -> dict:
    return {"model": (1, 0), "positive": (10, 0), "negative": (3, 0)}


def save(b: Builder, node_id: int, samples, prefix: str, x: int, y: int = 60) -> None:
    b.add(node_id, "VAEDecode", (x, y), {}, {"samples": samples, "vae": (1, 2)}, size=(210, 46))
    b.add(node_id + 1, "SaveImage", (x, y + 100), {"filename_prefix": f"guided_synthesis/{prefix}"},
          {"images": (node_id, 0)}, size=(420, 440))


def sdedit_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    flux_common(b, PROMPT)
    b.add(4, "LoadImage", (20, 530), {"image": STROKES_FILE}, size=(400, 340))
    b.add(5, "GS_SDEdit", (460, 170), {**SAMPLING, "strength": 0.7, "semantics": "paper", "repeats": 1,
                                       "strength_sweep": ""},
          {**conditioning(), "image": (4, 0), "vae": (1, 2)}, size=(340, 420))
    save(b, 6, (5, 0), "flux_sdedit", 840)
    return b.workflow()


def gradop_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    flux_common(b, PROMPT)
    b.add(4, "LoadImage", (20, 530), {"image": STROKES_FILE}, size=(400, 340))
    # 1024 x 1024, Flux's native size: the 512 px strokes are resized to it (logged)
    b.add(5, "GS_GradOPPlus", (460, 170),
          {**SAMPLING, "strength": 0.8, "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
           "painting_function": "gaussian blur", "decoder": "taesd", "loss_resolution": "full", "mode": "GradOP+",
           "gamma": 0.001, "width": 1024, "height": 1024, "batch_size": 1, "decoder_memory": "auto"},
          {**conditioning(), "vae": (1, 2), "strokes": (4, 0)}, size=(340, 620), models=[TAEF1_DECODER])
    save(b, 6, (5, 0), "flux_gradop", 840)
    b.add(8, "PreviewImage", (1300, 60), {}, {"images": (5, 1)}, size=(360, 420))
    return b.workflow()


def semantic_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    flux_common(b, "a photograph of a lake below snowy mountains at sunset")
    b.add(4, "GS_OpenCLIPLoader", (20, 530), dict(LOADER), size=(400, 180), models=[OPEN_CLIP_VIT_B_32])
    # text_weight: small on Flux.1 dev, where the normalised step is measured against the predicted noise
    b.add(5, "GS_CLIPSemanticGuidance", (460, 170),
          {"text": "an oil painting in warm autumn colours", "text_weight": 0.1, "image_weight": 0.0,
           "image_loss": "content", "cutouts": 4, "start_percent": 0.2, "end_percent": 0.7, "every": 1,
           "decoder": "taesd", "step_mode": "normalised"},
          {"model": (1, 0), "vae": (1, 2), "clip_model": (4, 0)}, size=(360, 420), models=[TAEF1_DECODER])
    b.add(11, "EmptySD3LatentImage", (460, 640), {"width": 1024, "height": 1024, "batch_size": 1}, size=(315, 106))
    b.add(12, "KSampler", (860, 60), {**SAMPLING, "denoise": 1.0},
          {**conditioning(), "model": (5, 0), "latent_image": (11, 0)}, size=(315, 262))
    save(b, 6, (12, 0), "flux_clip_guidance", 1215)
    return b.workflow()


def panorama_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    flux_common(b, "a photograph of a city skyline at dusk along a river, wide panorama, detailed")
    # windows of Flux's native 1024 px (window_size 0), half a window apart; no UNet backward (a 12B transformer's
    # backward per window is heavy): the sync gradient flows through the fast decoder and LPIPS only
    b.add(5, "GS_SyncDiffusion", (460, 170),
          {"width": 3072, "height": 1024, "batch_size": 1, **SAMPLING, "window_size": 0, "stride": 512,
           "sync_weight": 20.0, "decay": 0.95, "sync_steps": 6, "sync_every": 1, "anchor": -1, "lpips_net": "vgg",
           "loss_decoder": "taesd", "unet_jacobian": "none (approximate)", "loop": False, "window_batch": 2,
           "sync_batch": 1, "decoder_memory": "auto", "lpips_size": "full"},
          {**conditioning(), "vae": (1, 2)}, size=(340, 640), models=[LPIPS_VGG16, TAEF1_DECODER])
    b.add(6, "GS_SeamlessDecode", (840, 60), {"tile_size": 1024, "overlap": 128, "circular": False},
          {"samples": (5, 0), "vae": (1, 2)}, size=(300, 130))
    b.add(7, "SaveImage", (840, 250), {"filename_prefix": "guided_synthesis/flux_panorama"}, {"images": (6, 0)},
          size=(900, 360))
    return b.workflow()


def regions_workflow(node_classes) -> dict:
    """Stroke Regions to Words on Flux.1 dev: the painting's regions named in the prompt (T5 tokens), its MODEL and
    CONDITIONING (with FluxGuidance) into a text-to-image KSampler at the painting's size and into SDEdit."""
    b = Builder(node_classes)
    b.add(1, "CheckpointLoaderSimple", (20, 40), {"ckpt_name": FLUX1_DEV_FP8["name"]}, size=(315, 98),
          models=[FLUX1_DEV_FP8])
    b.add(3, "CLIPTextEncode", (20, 570), {"text": ""}, {"clip": (1, 1)}, size=(340, 110))
    b.add(4, "LoadImage", (20, 200), {"image": STROKES_FILE}, size=(315, 320))
    b.add(5, "GS_StrokeRegions", REGIONS_POS,
          {"prompt": REGIONS_PROMPT, "region_spec": REGION_SPEC, "strength": 0.4, "mode": "paint_with_words",
           "start_percent": 0.0, "end_percent": 1.0, "missing_phrases": "append", "colour_tolerance": 24,
           "min_region_percent": 0.2},
          {"model": (1, 0), "clip": (1, 1), "stroke": (4, 0)}, size=REGIONS_SIZE)
    b.add(13, "PreviewImage", (20, 730), {}, {"images": (5, 2)}, size=(340, 300))
    b.add(17, "FluxGuidance", (820, 40), {"guidance": 3.5}, {"conditioning": (5, 1)}, size=(315, 58))
    # a latent of the painting's size; with denoise 1.0 KSampler starts from pure noise (text-to-image)
    b.add(6, "VAEEncode", (820, 140), {}, {"pixels": (4, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(7, "KSampler", (820, 230), {**SAMPLING, "denoise": 1.0},
          {"model": (5, 0), "positive": (17, 0), "negative": (3, 0), "latent_image": (6, 0)}, size=(315, 262))
    b.add(10, "GS_SDEdit", (820, 540), {**SAMPLING, "strength": 0.7, "semantics": "paper", "repeats": 1,
                                        "strength_sweep": ""},
          {"model": (5, 0), "positive": (17, 0), "negative": (3, 0), "image": (4, 0), "vae": (1, 2)},
          size=(340, 420))
    for decode_id, save_id, source, y, prefix in ((8, 9, 7, 40, "flux_regions_txt2img"),
                                                  (11, 12, 10, 520, "flux_regions_sdedit")):
        b.add(decode_id, "VAEDecode", (1200, y), {}, {"samples": (source, 0), "vae": (1, 2)}, size=(210, 46))
        b.add(save_id, "SaveImage", (1200, y + 80), {"filename_prefix": f"guided_synthesis/{prefix}"},
              {"images": (decode_id, 0)}, size=(300, 340))
    return b.workflow()


WORKFLOWS = {SDEDIT: sdedit_workflow, GRADOP: gradop_workflow, SEMANTIC: semantic_workflow,
             PANORAMA: panorama_workflow, REGIONS: regions_workflow}
INPUTS = {STROKES_FILE: stroke_painting}
