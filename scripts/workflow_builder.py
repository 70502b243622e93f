"""Builds example workflows in UI format (as the frontend saves them) from the live node definitions.

Widget order comes from each node's INPUT_TYPES, so the files always match the nodes.
Used by scripts/build_workflows.py and the per-capability modules in scripts/workflows/.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402

STROKES_FILE = "guided_synthesis_strokes.png"


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

    def add(self, node_id: int, node_type: str, pos, widgets: dict, inputs: dict | None = None, size=(315, 200)):
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
                "properties": {"Node name for S&R": node_type}, "widgets_values": values}
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
        return {"last_node_id": max(n["id"] for n in self.nodes), "last_link_id": self.next_link - 1,
                "nodes": self.nodes, "links": self.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def common(builder: Builder, positive: str, negative: str, image_file: str):
    builder.add(1, "CheckpointLoaderSimple", (20, 60), {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
                size=(315, 98))
    builder.add(2, "CLIPTextEncode", (380, 40), {"text": positive}, {"clip": (1, 1)}, size=(400, 160))
    builder.add(3, "CLIPTextEncode", (380, 240), {"text": negative}, {"clip": (1, 1)}, size=(400, 160))
    builder.add(4, "LoadImage", (20, 260), {"image": image_file}, size=(315, 320))


