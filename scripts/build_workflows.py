"""Writes example_workflows/*.json (UI format, as the frontend saves it) and their inputs/thumbnails.

Widget order comes from the live node definitions, so the files always match the nodes.
Run: .venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402

OUT = ROOT / "example_workflows"


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


def sdedit_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    common(b, "a photograph of a mountain lake at sunset, detailed, realistic",
           "painting, flat colours, blurry, low quality", "guided_synthesis_strokes.png")
    b.add(5, "GS_SDEdit", (820, 60), {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "euler",
                                      "scheduler": "normal", "strength": 0.5, "semantics": "paper", "repeats": 1,
                                      "strength_sweep": "0.3, 0.5, 0.7"},
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "image": (4, 0), "vae": (1, 2)},
          size=(340, 420))
    b.add(6, "VAEDecode", (1200, 60), {}, {"samples": (5, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(7, "SaveImage", (1450, 60), {"filename_prefix": "guided_synthesis/sdedit_sweep"}, {"images": (6, 0)},
          size=(400, 420))
    return b.workflow()


WORKFLOWS = {"sdedit_strokes": sdedit_workflow}
INPUTS = {"guided_synthesis_strokes.png": stroke_painting}


def write_thumbnail(name: str, image) -> None:
    thumb = image.copy().convert("RGB")
    thumb.thumbnail((256, 256))
    thumb.save(OUT / f"{name}.jpg", quality=85)


def main() -> None:
    host = harness.Host(harness.temp_workdir())
    inputs_dir = OUT / "inputs"
    inputs_dir.mkdir(exist_ok=True)
    images = {}
    for file_name, make in INPUTS.items():
        images[file_name] = make()
        images[file_name].save(inputs_dir / file_name)
    for name, build in WORKFLOWS.items():
        workflow = build(host.nodes.NODE_CLASS_MAPPINGS)
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
        write_thumbnail(name, images["guided_synthesis_strokes.png"])
        print("wrote", name)


if __name__ == "__main__":
    main()
