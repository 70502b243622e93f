"""Test-only nodes for CLIP semantic guidance: tiny seeded open_clip towers (registered as open_clip configs, so
the real OpenCLIP Loader can read their files back) and a post-CFG recorder."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from comfy_api.latest import io

CATEGORY = "guided_synthesis_tests"
TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# Tiny towers with open_clip's own architectures (3.4M parameters; forward+backward in milliseconds on a CPU).
CONFIGS = {
    "GS-Test-Tiny-ViT": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64,
                                                         "patch_size": 16, "head_width": 32}, "text_cfg": TEXT_CFG},
    "GS-Test-Tiny-RN": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16,
                                                        "patch_size": None}, "text_cfg": TEXT_CFG},
}
KINDS = {"vit": "GS-Test-Tiny-ViT", "rn": "GS-Test-Tiny-RN"}
RECORDS: dict[str, list[dict]] = {}


def register_configs() -> None:
    import open_clip
    if all(name in open_clip.list_models() for name in CONFIGS):
        return
    folder = Path(tempfile.mkdtemp(prefix="gs-openclip-configs-"))
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def tiny_open_clip(kind: str = "vit", seed: int = 0) -> torch.nn.Module:
    """A seeded random tiny open_clip model (built outside inference mode)."""
    import open_clip
    register_configs()
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(KINDS[kind], pretrained=None)
        # larger random logits make the toy embeddings depend on the image more
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("proj") or name.endswith("projection"):
                    p.mul_(4.0)
    return model.eval()


def tiny_state_dict(kind: str = "vit", seed: int = 0) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in tiny_open_clip(kind, seed).state_dict().items()}


def open_clip_module():
    for name, module in list(sys.modules.items()):
        if name.endswith("nodes.toolkit.open_clip_model") and hasattr(module, "OpenCLIP"):
            return module
    raise RuntimeError("the pack's nodes/toolkit/open_clip_model.py is not loaded")


class TinyOpenCLIP(io.ComfyNode):
    """A tiny random open_clip model as the pack's GS_OPEN_CLIP value; stands in for OpenCLIP Loader."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestTinyOpenCLIP", display_name="Tiny OpenCLIP (test)", category=CATEGORY,
                         inputs=[io.Combo.Input("kind", options=list(KINDS), default="vit"),
                                 io.Int.Input("seed", default=0, min=0, max=2**31)],
                         outputs=[io.Custom("GS_OPEN_CLIP").Output()])

    @classmethod
    def execute(cls, kind="vit", seed=0) -> io.NodeOutput:
        return io.NodeOutput(open_clip_module().OpenCLIP.wrap(tiny_open_clip(kind, seed), KINDS[kind], "fp32"))


class _Recorder:
    def __init__(self, key: str):
        self.key = key

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args):
        keep = {}
        for name in ("denoised", "cond_denoised", "uncond_denoised", "input", "sigma"):
            value = args.get(name)
            keep[name] = None if value is None else value.detach().clone().cpu()
        keep["post_cfg_functions"] = list(args["model_options"].get("sampler_post_cfg_function", []))
        RECORDS.setdefault(self.key, []).append(keep)
        return args["denoised"]


class PostCFGRecorder(io.ComfyNode):
    """A clone of MODEL with a post-CFG function that records its arguments (in RECORDS[key]) and changes nothing."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestPostCFGRecorder", display_name="Post-CFG Recorder (test)", category=CATEGORY,
                         inputs=[io.Model.Input("model"), io.String.Input("key", default="rec")],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, key) -> io.NodeOutput:
        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(_Recorder(key))
        return io.NodeOutput(patched)


class OpenCLIPProbe(io.ComfyNode):
    """An output node that takes a GS_OPEN_CLIP and records its name (RECORDS['open_clip']): a prompt that runs a
    loader and nothing else."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestOpenCLIPProbe", display_name="OpenCLIP Probe (test)", category=CATEGORY,
                         inputs=[io.Custom("GS_OPEN_CLIP").Input("clip_model")], outputs=[], is_output_node=True)

    @classmethod
    def execute(cls, clip_model) -> io.NodeOutput:
        RECORDS.setdefault("open_clip", []).append({"name": clip_model.name})
        return io.NodeOutput()


NODES = [TinyOpenCLIP, PostCFGRecorder, OpenCLIPProbe]
