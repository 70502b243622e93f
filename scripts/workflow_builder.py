"""Builds example workflows in UI format (as the frontend saves them) from the live node definitions.

Widget order comes from each node's INPUT_TYPES, so the files always match the nodes.
Used by scripts/build_workflows.py and the per-capability modules in scripts/workflows/.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The one path set-up of scripts/: run as a file (python scripts/build_workflows.py), the repository root goes on
# sys.path for the development package, as pytest (pythonpath) and `python -m bench` (run from the root) have it.
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
from devkit import harness  # noqa: E402

STROKES_FILE = "guided_synthesis_strokes.png"

# The model files the templates load, declared in the form the frontend's missing-models dialog reads: on the
# loader node (properties.models, matched against its widget values) and in the workflow's top-level "models"
# list. Sizes are for the README's table.
SD15_CHECKPOINT = {"name": "v1-5-pruned-emaonly-fp16.safetensors", "directory": "checkpoints",
                   "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                          "v1-5-pruned-emaonly-fp16.safetensors?download=true"}
OPEN_CLIP_VIT_B_32 = {"name": "open_clip_model.safetensors", "directory": "clip_guidance",
                      "url": "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/"
                             "open_clip_model.safetensors?download=true"}
# Flux.1 dev as one fp8 file (transformer, CLIP-L + T5-XXL text encoders, VAE) for Load Checkpoint, and its fast
# TAESD decoder (the methods' decoder 'taesd'), which ComfyUI's previews read too; GitHub only (not downloaded by
# the frontend's dialog, listed with its address)
FLUX1_DEV_FP8 = {"name": "flux1-dev-fp8.safetensors", "directory": "checkpoints",
                 "url": "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev-fp8.safetensors"
                        "?download=true"}
TAEF1_DECODER = {"name": "taef1_decoder.pth", "directory": "vae_approx",
                 "url": "https://github.com/madebyollin/taesd/raw/main/taef1_decoder.pth"}
# checkpoint file -> the TAESD decoder file its latent format asks for (decoder 'taesd')
FAST_DECODERS = {FLUX1_DEV_FP8["name"]: TAEF1_DECODER}
LPIPS_VGG16 = {"name": "vgg16-397923af.pth", "directory": "lpips",
               "url": "https://download.pytorch.org/models/vgg16-397923af.pth"}

# The window a new user opens a template in, and the frontend's fit: LiteGraph's DragAndScale.fitToBounds
# (zoom 0.75, the node boxes padded by 10 px), which the frontend applies to a template it opens; a saved
# extra.ds with that view opens the same way where the saved view is restored instead.
VIEW = (1600, 1000)
FIT_ZOOM = 0.75
FIT_PADDING = 10
TITLE_HEIGHT = 30  # LiteGraph's NODE_TITLE_HEIGHT: a node's box starts this far above its pos


def stroke_painting(size: int = 512):
    """A coarse colour painting: sky, sun, mountains, lake, meadow (the SDEdit/GradOP+ guide)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (110, 170, 235))
    draw = ImageDraw.Draw(image)
    s = size / 512
    draw.ellipse([360 * s, 60 * s, 440 * s, 140 * s], fill=(250, 210, 80))
    draw.polygon([(0, 300 * s), (140 * s, 150 * s), (260 * s, 280 * s), (380 * s, 170 * s), (512 * s, 300 * s)],
                 fill=(95, 90, 120))
    draw.rectangle([0, 300 * s, size, 400 * s], fill=(40, 100, 170))
    draw.rectangle([0, 400 * s, size, size], fill=(70, 150, 60))
    return image


class Builder:
    def __init__(self, node_classes):
        self.node_classes = node_classes
        self.nodes, self.links = [], []
        self.next_link = 1

    def add(self, node_id: int, node_type: str, pos, widgets: dict, inputs: dict | None = None, size=(315, 200),
            models: list[dict] | None = None):
        """``models``: the model files this node loads (see SD15_CHECKPOINT), declared on the node."""
        node_class = self.node_classes[node_type]
        spec = node_class.INPUT_TYPES()
        flat_spec = {**spec.get("required", {}), **spec.get("optional", {})}
        values = []
        for name, options in harness._widget_inputs(node_class):
            if name not in widgets:
                kind, opts = flat_spec[name][0], (flat_spec[name][1] if len(flat_spec[name]) > 1 else {})
                default = opts.get("default", kind[0] if isinstance(kind, list) and kind else "")
                widgets[name] = default
            values.append(widgets[name])
            if options.get("control_after_generate"):
                values.append("fixed")
            if options.get("image_upload"):
                values.append("image")
        sockets = []
        for section in ("required", "optional"):
            for name, value in spec.get(section, {}).items():
                kind = value[0]
                if isinstance(kind, list) or kind in harness.WIDGET_TYPES:
                    continue
                sockets.append({"name": name, "type": kind, "link": None})
        node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": sockets,
                "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                            for i, (kind, name) in enumerate(zip(node_class.RETURN_TYPES, node_class.RETURN_NAMES
                                                                 if hasattr(node_class, "RETURN_NAMES") and node_class.RETURN_NAMES
                                                                 else node_class.RETURN_TYPES))],
                "properties": {"Node name for S&R": node_type, **({"models": [dict(m) for m in models]} if models else {})},
                "widgets_values": values}
        self.nodes.append(node)
        for name, (source_id, slot) in (inputs or {}).items():
            self.connect(source_id, slot, node_id, name)
        return node

    def connect(self, source_id, slot, target_id, input_name):
        source = next(n for n in self.nodes if n["id"] == source_id)
        target = next(n for n in self.nodes if n["id"] == target_id)
        socket_index = next(i for i, s in enumerate(target["inputs"]) if s["name"] == input_name)
        kind = source["outputs"][slot]["type"]
        link_id = self.next_link
        self.next_link += 1
        self.links.append([link_id, source_id, slot, target_id, socket_index, kind])
        target["inputs"][socket_index]["link"] = link_id
        source["outputs"][slot]["links"].append(link_id)

    def workflow(self) -> dict:
        models = []
        for node in self.nodes:
            for model in node["properties"].get("models", []):
                if model not in models:
                    models.append(dict(model))
        workflow = {"last_node_id": max(n["id"] for n in self.nodes), "last_link_id": self.next_link - 1,
                    "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
                    "extra": {"ds": fitted_view(self.nodes)}, "version": 0.4}
        if models:
            workflow["models"] = models
        return workflow


def node_bounds(nodes: list[dict]) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the nodes' boxes (title bar included), padded as the frontend's fit pads them."""
    left = min(n["pos"][0] for n in nodes) - FIT_PADDING
    top = min(n["pos"][1] - TITLE_HEIGHT for n in nodes) - FIT_PADDING
    right = max(n["pos"][0] + n["size"][0] for n in nodes) + FIT_PADDING
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes) + FIT_PADDING
    return left, top, right - left, bottom - top


def fitted_view(nodes: list[dict], view=VIEW) -> dict:
    """extra.ds that shows all nodes as the frontend's fit would in a ``view`` window: screen = (graph + offset) * scale."""
    left, top, width, height = node_bounds(nodes)
    scale = FIT_ZOOM * min(view[0] / width, view[1] / height)
    scale = min(scale, 1.0)
    offset = [view[0] * 0.5 / scale - left - width * 0.5, view[1] * 0.5 / scale - top - height * 0.5]
    return {"scale": round(scale, 4), "offset": [round(offset[0], 1), round(offset[1], 1)]}


def checkpoint(builder: Builder, pos=(20, 60), size=(400, 98)) -> dict:
    """Load Checkpoint (node 1) with the SD1.5 checkpoint the templates name, declared for download."""
    return builder.add(1, "CheckpointLoaderSimple", pos, {"ckpt_name": SD15_CHECKPOINT["name"]}, size=size,
                       models=[SD15_CHECKPOINT])


def prompts(builder: Builder, positive: str, negative: str, x: int = 20, width: int = 400) -> None:
    """The positive (node 2) and negative (node 3) prompts, stacked under the checkpoint in the first column."""
    builder.add(2, "CLIPTextEncode", (x, 200), {"text": positive}, {"clip": (1, 1)}, size=(width, 130))
    builder.add(3, "CLIPTextEncode", (x, 370), {"text": negative}, {"clip": (1, 1)}, size=(width, 110))


def common(builder: Builder, positive: str, negative: str, image_file: str):
    """First column: checkpoint, prompts and the painting (Load Image, node 4); the graph goes on at x = 460."""
    checkpoint(builder)
    prompts(builder, positive, negative)
    builder.add(4, "LoadImage", (20, 530), {"image": image_file}, size=(400, 340))


