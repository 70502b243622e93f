"""Stroke Canvas example: strokes painted in the node, turned into a realistic image with SDEdit."""
from __future__ import annotations

from workflow_builder import Builder, checkpoint, prompts

TITLE = "Stroke Canvas into SDEdit"

CANVAS_FILE = "guided_synthesis_canvas.png"  # example_workflows/inputs/, copied to input/ by the pack
CANVAS_SIZE = 512


def canvas_painting(size: int = CANVAS_SIZE):
    """Hard-edged RGBA strokes as the canvas widget saves them (alpha 0 = unpainted): a house on a hill
    under a blue sky, with some canvas left unpainted (it shows the node's background colour)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    s = size / 512
    sky, sun, grass, dark_grass = (110, 198, 255, 255), (245, 211, 39, 255), (76, 175, 80, 255), (27, 94, 32, 255)
    for y in range(20, 250, 34):  # wide sky strokes with gaps
        draw.line([(10 * s, y * s), (500 * s, (y + 6) * s)], fill=sky, width=int(28 * s), joint="curve")
    draw.ellipse([380 * s, 40 * s, 460 * s, 120 * s], fill=sun)
    draw.polygon([(0, 330 * s), (160 * s, 250 * s), (330 * s, 290 * s), (512 * s, 240 * s), (512 * s, 512 * s),
                  (0, 512 * s)], fill=grass)
    for x in range(30, 500, 70):  # darker grass strokes
        draw.line([(x * s, 470 * s), ((x + 40) * s, 420 * s)], fill=dark_grass, width=int(14 * s))
    draw.rectangle([190 * s, 250 * s, 300 * s, 340 * s], fill=(224, 60, 49, 255))  # house
    draw.polygon([(175 * s, 255 * s), (245 * s, 190 * s), (315 * s, 255 * s)], fill=(141, 85, 36, 255))  # roof
    draw.rectangle([232 * s, 295 * s, 258 * s, 340 * s], fill=(60, 40, 20, 255))  # door
    return image


def canvas_sdedit_workflow(node_classes) -> dict:
    b = Builder(node_classes)
    checkpoint(b)
    prompts(b, "a photograph of a red house on a green hill, blue sky, sunny day, detailed, realistic",
            "painting, flat colours, cartoon, blurry, low quality")
    b.add(4, "GS_StrokeCanvas", (460, 60), {"painting": f"{CANVAS_FILE} [input]", "width": CANVAS_SIZE,
                                            "height": CANVAS_SIZE, "background_color": "#ffffff"},
          size=(420, 720))
    b.add(5, "GS_SDEdit", (920, 60), {"seed": 7, "steps": 30, "cfg": 7.5, "sampler_name": "euler",
                                      "scheduler": "normal", "strength": 0.55, "semantics": "paper", "repeats": 1,
                                      "strength_sweep": ""},
          {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "image": (4, 0), "vae": (1, 2)},
          size=(340, 420))
    b.add(6, "VAEDecode", (920, 540), {}, {"samples": (5, 0), "vae": (1, 2)}, size=(210, 46))
    b.add(7, "SaveImage", (1300, 60), {"filename_prefix": "guided_synthesis/stroke_canvas"}, {"images": (6, 0)},
          size=(400, 420))
    return b.workflow()


WORKFLOWS = {TITLE: canvas_sdedit_workflow}
INPUTS = {CANVAS_FILE: canvas_painting}
