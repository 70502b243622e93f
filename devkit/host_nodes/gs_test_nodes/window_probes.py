"""Test nodes for per-window conditioning: a tiny ControlNet and a recorder of what each model call's
conditioning holds (a ``sampler_calc_cond_batch_function`` on a clone of MODEL, which then calls ComfyUI's
own ``calc_cond_batch``; the pack's panorama sampler chains it)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.ops
import comfy.samplers

from . import tiny

CATEGORY = "guided_synthesis_tests"
RECORDS: dict[str, list] = {}  # key -> one dict per model call


def _entry_record(entry: dict) -> dict:
    model_conds = entry.get("model_conds") or {}
    control = entry.get("control")
    return {
        "c_concat": model_conds["c_concat"].cond.detach().clone() if "c_concat" in model_conds else None,
        "y": model_conds["y"].cond.detach().clone() if "y" in model_conds else None,
        "area": entry.get("area"), "strength": entry.get("strength", 1.0),
        "mask": entry["mask"].detach().clone() if "mask" in entry else None,
        "mask_strength": entry.get("mask_strength", 1.0),
        "hint": control.cond_hint_original.detach().clone() if control is not None else None,
        "control": control,
    }


class _CondRecorder:
    def __init__(self, key: str):
        self.key = key

    def __call__(self, args: dict):
        RECORDS.setdefault(self.key, []).append({
            "x": args["input"].detach().clone(), "sigma": float(args["sigma"].reshape(-1)[0]), "model": args["model"],
            "conds": [None if entries is None else [_entry_record(e) for e in entries] for entries in args["conds"]]})
        return comfy.samplers.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"],
                                              args["model_options"])


class CondRecorder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestCondRecorder", display_name="Conditioning Recorder (test)",
                         category=CATEGORY, inputs=[io.Model.Input("model"), io.String.Input("key", default="rec")],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, key) -> io.NodeOutput:
        patched = model.clone()
        patched.model_options["sampler_calc_cond_batch_function"] = _CondRecorder(key)
        return io.NodeOutput(patched)


def tiny_controlnet(seed: int = 0) -> comfy.controlnet.ControlNet:
    """A ControlNet for the tiny SD1.5 UNet (same blocks, 3-channel hint), seeded random weights."""
    config = {k: v for k, v in tiny._unet_config("sd15", False).items() if k != "out_channels"}
    model = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, device="cpu",
                                       operations=comfy.ops.disable_weight_init)
    tiny.seeded_init_(model, seed)
    return comfy.controlnet.ControlNet(model, load_device=comfy.model_management.get_torch_device(),
                                       manual_cast_dtype=None)


class TinyControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestTinyControlNet", display_name="Tiny ControlNet (test)", category=CATEGORY,
                         inputs=[io.Int.Input("seed", default=0, min=0, max=2**31)],
                         outputs=[io.ControlNet.Output()])

    @classmethod
    def execute(cls, seed) -> io.NodeOutput:
        return io.NodeOutput(tiny_controlnet(seed))


class RampImage(io.ComfyNode):
    """An IMAGE whose every pixel is different: red = x / width, green = y / height, blue = a fine checker
    (so a crop taken at the wrong place never matches)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestRampImage", display_name="Ramp Image (test)", category=CATEGORY,
                         inputs=[io.Int.Input("width", default=64, min=1, max=4096),
                                 io.Int.Input("height", default=64, min=1, max=4096)],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, width, height) -> io.NodeOutput:
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        image = torch.stack([xs / width, ys / height, ((xs + ys) % 2).float()], dim=-1)
        return io.NodeOutput(image.unsqueeze(0), (xs / width).unsqueeze(0))


class MaskBatch(io.ComfyNode):
    """Two or three MASKs of one size as one batch."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestMaskBatch", display_name="Mask Batch (test)", category=CATEGORY,
                         inputs=[io.Mask.Input("first"), io.Mask.Input("second"),
                                 io.Mask.Input("third", optional=True)],
                         outputs=[io.Mask.Output()])

    @classmethod
    def execute(cls, first, second, third=None) -> io.NodeOutput:
        masks = [m.reshape(-1, *m.shape[-2:]) for m in (first, second, third) if m is not None]
        return io.NodeOutput(torch.cat(masks))


class _PositionRecorder:
    """What a Flux-family transformer sees on each call: its latent input ``x`` (a DIFFUSION_MODEL wrapper), the
    ``rope_options`` of the call and the image position ids it builds (``post_input`` patch of forward_orig)."""

    def __init__(self, key: str):
        self.key = key

    def wrapper(self, executor, x, *args, **kwargs):
        options = kwargs.get("transformer_options", args[6] if len(args) > 6 else {})
        RECORDS.setdefault(self.key, []).append({"x": x.detach().clone(), "img_ids": None,
                                                 "rope_options": options.get("rope_options")})
        return executor(x, *args, **kwargs)

    def post_input(self, values: dict) -> dict:
        RECORDS[self.key][-1]["img_ids"] = values["img_ids"].detach().clone()
        return values


class PositionRecorder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestPositionRecorder", display_name="Position Recorder (test)",
                         category=CATEGORY, description="Records each Flux-family model call's latent input and "
                                                        "image position ids (on a clone of MODEL).",
                         inputs=[io.Model.Input("model"), io.String.Input("key", default="ids")],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, key) -> io.NodeOutput:
        import comfy.patcher_extension
        recorder = _PositionRecorder(key)
        patched = model.clone()
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "gs_test_positions",
                                     recorder.wrapper)
        patched.set_model_patch(recorder.post_input, "post_input")
        return io.NodeOutput(patched)


NODES = [CondRecorder, TinyControlNet, RampImage, MaskBatch, PositionRecorder]
