"""Test-only ComfyUI nodes for the Guided Synthesis suite. Never shipped in the pack's node list.

Loaded from ``devkit/host_nodes/`` as a custom_nodes folder (in-process and by the real server).
"""
from __future__ import annotations

import hashlib

import torch
from comfy_api.latest import ComfyExtension, io

from . import (denoiser_probes, guard_probes, oracle_probes, panorama_oracle, probes, regions_probes, semantic_probes,
               tiny, tiny_flow, tiny_text_encoders, window_probes)

CATEGORY = "guided_synthesis_tests"
CAPTURED: dict[str, torch.Tensor] = {}


class TinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestTinyCheckpoint", display_name="Tiny Checkpoint (test)", category=CATEGORY,
                         description="Seeded random tiny MODEL, CLIP and VAE; stands in for CheckpointLoaderSimple.",
                         inputs=[io.Combo.Input("kind", options=list(tiny.KINDS), default="sd15"),
                                 io.Int.Input("seed", default=0, min=0, max=2**31),
                                 io.Combo.Input("vae_kind", options=["taesd", "kl"], default="taesd", optional=True)],
                         outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

    @classmethod
    def execute(cls, kind, seed, vae_kind="taesd") -> io.NodeOutput:
        vae = tiny.tiny_kl_vae(seed) if vae_kind == "kl" else tiny.tiny_vae(seed)
        return io.NodeOutput(tiny.tiny_model(kind, seed), tiny.tiny_clip(seed), vae)


class TinyFlowCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestTinyFlowCheckpoint", display_name="Tiny Flow Checkpoint (test)",
                         category=CATEGORY,
                         description="Seeded random tiny flow transformer (Flux.1 dev/schnell, SD3.5, Chroma, "
                                     "Qwen-Image, Z-Image) with the tiny CLIP and a 16-channel VAE (Wan 2.1 layout "
                                     "for Qwen-Image); stands in for CheckpointLoaderSimple.",
                         inputs=[io.Combo.Input("kind", options=list(tiny_flow.FLOW_KINDS), default="flux_dev"),
                                 io.Int.Input("seed", default=0, min=0, max=2**31),
                                 io.Combo.Input("text_encoder", options=list(tiny_flow.TEXT_ENCODERS),
                                                default="tiny_clip", optional=True,
                                                tooltip="tiny_clip: the tiny SD1 CLIP (768 wide) for every family; "
                                                        "family: the family's own tokenizer(s) and text-encoder "
                                                        "class at toy width, the model built to match.")],
                         outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

    @classmethod
    def execute(cls, kind, seed, text_encoder="tiny_clip") -> io.NodeOutput:
        clip = tiny_text_encoders.tiny_family_clip(kind, seed) if text_encoder == "family" else tiny.tiny_clip(seed)
        return io.NodeOutput(tiny_flow.tiny_flow_model(kind, seed, text_encoder), clip,
                             tiny_flow.tiny_flow_vae_for(kind, seed))


class LoadImageSmall(io.ComfyNode):
    """LoadImage, then a downscale: example workflows keep their 512 px inputs, tests run at 64 px."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestLoadImageSmall", display_name="Load Image Small (test)", category=CATEGORY,
                         inputs=[io.String.Input("image"), io.Int.Input("size", default=64, min=8, max=4096)],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, image, size) -> io.NodeOutput:
        import comfy.utils
        import nodes

        pixels, mask = nodes.LoadImage().load_image(image)
        scale = size / max(pixels.shape[1], pixels.shape[2])
        height, width = (max(8, round(pixels.shape[1] * scale / 8) * 8), max(8, round(pixels.shape[2] * scale / 8) * 8))
        pixels = comfy.utils.common_upscale(pixels.movedim(-1, 1), width, height, "area", "disabled").movedim(1, -1)
        mask = comfy.utils.common_upscale(mask.unsqueeze(1), width, height, "area", "disabled")[:, 0]
        return io.NodeOutput(pixels, mask)


class RandomConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestConditioning", display_name="Random Conditioning (test)", category=CATEGORY,
                         inputs=[io.Combo.Input("kind", options=list(tiny.KINDS), default="sd15"),
                                 io.Int.Input("seed", default=0, min=0, max=2**31)],
                         outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls, kind, seed) -> io.NodeOutput:
        return io.NodeOutput(tiny.random_conditioning(kind, seed))


class ImageChannels(io.ComfyNode):
    """IMAGE -> the same picture with 1 (grey) or 4 (RGBA) channels, to test channel handling."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestImageChannels", display_name="Image Channels (test)", category=CATEGORY,
                         inputs=[io.Image.Input("image"), io.Int.Input("channels", default=4, min=1, max=4)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, channels) -> io.NodeOutput:
        if channels == 1:
            return io.NodeOutput(image[..., :3].mean(dim=-1, keepdim=True))
        if channels == 4:
            return io.NodeOutput(torch.cat([image[..., :3], torch.full_like(image[..., :1], 0.5)], dim=-1))
        return io.NodeOutput(image[..., :channels])


class Strokes(io.ComfyNode):
    """A two-colour stroke painting (left / right halves) and a MASK of its left half."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestStrokes", display_name="Strokes (test)", category=CATEGORY,
                         inputs=[io.Int.Input("width", default=32, min=8, max=4096),
                                 io.Int.Input("height", default=32, min=8, max=4096),
                                 io.Int.Input("left", default=0xCC3322, min=0, max=0xFFFFFF),
                                 io.Int.Input("right", default=0x2255CC, min=0, max=0xFFFFFF),
                                 io.Int.Input("batch", default=1, min=1, max=16)],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, width, height, left, right, batch) -> io.NodeOutput:
        def rgb(value):
            return torch.tensor([(value >> 16) & 255, (value >> 8) & 255, value & 255]) / 255.0
        image = torch.empty(batch, height, width, 3)
        image[:, :, : width // 2] = rgb(left)
        image[:, :, width // 2:] = rgb(right)
        mask = torch.zeros(batch, height, width)
        mask[:, :, : width // 2] = 1.0
        return io.NodeOutput(image, mask)


class Capture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestCapture", display_name="Capture (test)", category=CATEGORY,
                         is_output_node=True,
                         inputs=[io.String.Input("key", default="out"),
                                 io.Latent.Input("latent", optional=True), io.Image.Input("image", optional=True),
                                 io.Sigmas.Input("sigmas", optional=True)],
                         outputs=[])

    @classmethod
    def execute(cls, key, latent=None, image=None, sigmas=None) -> io.NodeOutput:
        value = latent["samples"] if latent is not None else image if image is not None else sigmas
        CAPTURED[key] = value.detach().clone().cpu()
        return io.NodeOutput(ui={"gs_capture": [{"key": key, "shape": list(value.shape),
                                                 "sum": float(value.double().sum())}]})


class CaptureConditioning(io.ComfyNode):
    """The first entry of a CONDITIONING: its context under ``key``, its pooled vector under ``key_pooled`` and
    its attention mask under ``key_mask`` where it has them."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestCaptureConditioning", display_name="Capture Conditioning (test)",
                         category=CATEGORY, is_output_node=True,
                         inputs=[io.String.Input("key", default="cond"), io.Conditioning.Input("conditioning")],
                         outputs=[])

    @classmethod
    def execute(cls, key, conditioning) -> io.NodeOutput:
        context, extra = conditioning[0]
        CAPTURED[key] = context.detach().clone().cpu()
        for name, suffix in (("pooled_output", "pooled"), ("attention_mask", "mask")):
            CAPTURED.pop(f"{key}_{suffix}", None)
            if extra.get(name) is not None:
                CAPTURED[f"{key}_{suffix}"] = extra[name].detach().clone().cpu()
        return io.NodeOutput(ui={"gs_capture": [{"key": key, "shape": list(context.shape)}]})


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Fingerprint(io.ComfyNode):
    """Hashes of upstream objects, to prove a pack node left them unchanged."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestFingerprint", display_name="Fingerprint (test)", category=CATEGORY,
                         is_output_node=True,
                         inputs=[io.Model.Input("model"), io.Vae.Input("vae"), io.Latent.Input("latent"),
                                 io.AnyType.Input("after", optional=True)],
                         outputs=[])

    @classmethod
    def execute(cls, model, vae, latent, after=None) -> io.NodeOutput:
        model_sd = model.model.state_dict()
        vae_sd = vae.first_stage_model.state_dict()
        return io.NodeOutput(ui={"gs_fingerprint": [{
            "model": _digest(model_sd[k] for k in sorted(model_sd)),
            "vae": _digest(vae_sd[k] for k in sorted(vae_sd)),
            "latent": _digest([latent["samples"]]),
            "model_options_keys": sorted(model.model_options.get("transformer_options", {}).keys()),
            "weight_wrappers": len(model.weight_wrapper_patches),
        }]})


class GradientProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestGradientProbe", display_name="Gradient Probe (test)", category=CATEGORY,
                         is_output_node=True,
                         inputs=[io.Model.Input("model"), io.Vae.Input("vae"), io.Latent.Input("latent"),
                                 io.Conditioning.Input("positive"),
                                 io.Float.Input("sigma", default=5.0, min=0.0, max=100.0),
                                 io.Boolean.Input("use_recipe", default=True)],
                         outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, model, vae, latent, positive, sigma, use_recipe) -> io.NodeOutput:
        result = probes.gradient_norms(model, vae, latent, positive, sigma, use_recipe)
        return io.NodeOutput(latent, ui={"gs_gradients": [result]})


class TestNodes(ComfyExtension):
    async def get_node_list(self):
        return [TinyCheckpoint, TinyFlowCheckpoint, LoadImageSmall, RandomConditioning, ImageChannels, Strokes, Capture,
                CaptureConditioning, Fingerprint,
                GradientProbe, *regions_probes.NODES, *denoiser_probes.NODES, *oracle_probes.NODES,
                *semantic_probes.NODES, *panorama_oracle.NODES, *window_probes.NODES, *guard_probes.NODES]


async def comfy_entrypoint():
    return TestNodes()
