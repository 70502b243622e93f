"""Stroke Canvas: a painting made in the node's widget (web/widgets/stroke_canvas.js), composited over a
background colour or an IMAGE, plus the MASK of painted pixels.

The widget uploads the painting as an RGBA PNG into ComfyUI's input folder (subfolder
``guided_synthesis``, the way the mask editor uploads) and stores only the file reference, e.g.
``guided_synthesis/stroke_canvas_1a2b3c4d5e6f7a8b.png [input]``, in the ``painting`` widget. Alpha is
what was painted: 0 = untouched, 255 = paint.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from comfy_api.latest import io

import comfy.utils
import folder_paths
import node_helpers

from ..guidance import checks
from .toolkit import host

CATEGORY = "guided_synthesis/canvas"
BACKGROUND_UI_KEY = "gs_canvas_background"  # ui message the widget reads to show the background
MAX_SIZE = 8192


def painting_path(painting: str, name: str = "painting") -> str | None:
    """The file a painting reference points at (None for an empty reference = nothing painted).

    References are annotated like LoadImage's (``sub/file.png [input]``; no annotation = input folder)
    and must stay inside the folder they name.
    """
    if painting is None or not str(painting).strip():
        return None
    reference = str(painting).strip()
    relative, base = folder_paths.annotated_filepath(reference)
    base = base or folder_paths.get_input_directory()
    path = os.path.abspath(os.path.join(base, relative))
    if os.path.commonpath((os.path.abspath(base), path)) != os.path.abspath(base):
        raise ValueError(f"{name}: {reference!r} points outside ComfyUI's {os.path.basename(base)} folder")
    return path


def check_painting_file(painting: str, name: str = "painting") -> str | None:
    """painting_path, plus a clear error when the file is not there."""
    path = painting_path(painting, name)
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(
            f"{name}: file {painting!r} not found in ComfyUI's input folder. Paint on the canvas "
            f"again, or copy the painting file there (example paintings are in example_workflows/inputs/).")
    return path


def load_painting(path: str, width: int, height: int, name: str = "painting") -> tuple[torch.Tensor, torch.Tensor]:
    """RGBA file -> (rgb [H,W,3], alpha [H,W]) float32 in 0..1. Files without alpha count as fully painted."""
    from PIL import Image, ImageOps

    try:
        with node_helpers.pillow(Image.open, path) as opened:
            picture = node_helpers.pillow(ImageOps.exif_transpose, opened)
            size = picture.size
            rgba = np.asarray(picture.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # never the server's absolute path in the message: the file's name is enough for the user
        raise ValueError(f"{name}: {os.path.basename(path)} is not a readable image ({type(error).__name__}); "
                         f"paint on the canvas again or replace the file with a PNG") from None
    if size != (width, height):
        raise ValueError(
            f"{name}: {os.path.basename(path)} is {size[0]}x{size[1]} pixels but the canvas "
            f"is width x height = {width}x{height}; set width/height to the painting's size or repaint it")
    pixels = torch.from_numpy(rgba.copy())
    return pixels[..., :3], pixels[..., 3]


def background_batch(image: torch.Tensor | None, color: tuple[float, float, float], width: int,
                     height: int) -> torch.Tensor:
    """The background as [B,H,W,3]: the IMAGE resized to the canvas, or a plain colour (B = 1). New tensor."""
    if image is None:
        return torch.tensor(color, dtype=torch.float32).view(1, 1, 1, 3).expand(1, height, width, 3).clone()
    rgb = host.image_to_rgb(image, "image").to(dtype=torch.float32)
    if tuple(rgb.shape[1:3]) != (height, width):
        rgb = comfy.utils.common_upscale(rgb.movedim(-1, 1), width, height, "bilinear", "disabled").movedim(1, -1)
    return rgb.clamp(0.0, 1.0).clone()


def render(painting: str, width: int, height: int, background_color: str,
           image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE [B,H,W,3], MASK [B,H,W]): painting over the background, and the painting's alpha."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
            raise ValueError(f"{name} must be an integer in 1..{MAX_SIZE}, got {value!r}")
    color = checks.parse_hex_colour(background_color, "background_color")
    background = background_batch(image, color, width, height)
    path = check_painting_file(painting)
    if path is None:
        rgb = torch.zeros(height, width, 3)
        alpha = torch.zeros(height, width)
    else:
        rgb, alpha = load_painting(path, width, height)
    rgb, alpha = rgb.to(background.device), alpha.to(background.device)
    composite = rgb * alpha[..., None] + background * (1.0 - alpha[..., None])
    mask = alpha.unsqueeze(0).expand(background.shape[0], -1, -1).clone()
    return composite.clamp(0.0, 1.0), mask


def file_fingerprint(painting: str) -> str:
    """sha256 of the painting file (as LoadImage's IS_CHANGED); '' when nothing is painted."""
    path = painting_path(painting)
    if path is None:
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StrokeCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_StrokeCanvas",
            display_name="Stroke Canvas",
            category=CATEGORY,
            description="Paint strokes in the node (brush, palette, eraser, bucket fill, undo/redo) and get them as "
                        "an IMAGE, composited over a background colour or over the optional 'image' (for "
                        "stroke-based editing), plus a MASK of the painted pixels. The painting is stored as a PNG "
                        "in ComfyUI's input folder (subfolder guided_synthesis); the workflow keeps only its name.",
            inputs=[
                io.String.Input("painting", default="",
                                tooltip="The painting file, set by the canvas widget when you paint: an RGBA PNG in "
                                        "ComfyUI's input folder, written like LoadImage's names "
                                        "('guided_synthesis/stroke_canvas_....png [input]'). Transparent = not "
                                        "painted. Empty = nothing painted yet."),
                io.Int.Input("width", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Canvas width in pixels; the painting file must have this width. Changing it "
                                     "rescales the painting in the widget."),
                io.Int.Input("height", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Canvas height in pixels; the painting file must have this height."),
                io.String.Input("background_color", default="#ffffff",
                                tooltip="Colour under the strokes (#rrggbb or #rgb) when no 'image' is connected."),
                io.Image.Input("image", optional=True,
                               tooltip="Optional picture to paint over (stroke-based editing). It is resized to "
                                       "width x height; the widget shows it after the node has run once."),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The painting composited over the background."),
                io.Mask.Output(display_name="MASK", tooltip="1 where paint was applied, 0 elsewhere (the "
                                                            "painting's alpha); e.g. SDEdit's mask."),
            ],
        )

    @classmethod
    def validate_inputs(cls, painting=None):
        # Only what the host cannot check, and only 'painting', so the host keeps validating the other inputs
        # (min/max) and a painting error is shown on 'painting' alone. background_color is checked when the
        # node runs (the error names it). A linked input is absent here; execute() checks it then.
        try:
            check_painting_file(painting)
        except (ValueError, FileNotFoundError) as error:
            return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, painting=None, **kwargs):
        return file_fingerprint(painting)

    @classmethod
    @host.validated
    def execute(cls, painting, width, height, background_color, image=None) -> io.NodeOutput:
        composite, mask = render(painting, width, height, background_color, image)
        if image is None:
            return io.NodeOutput(composite, mask)
        # Show the (resized) background in the widget so the user can paint over it.
        from comfy_api.latest import ui

        saved = ui.ImageSaveHelper.save_images(
            background_batch(image, (1.0, 1.0, 1.0), width, height)[:1], filename_prefix="gs_canvas_background",
            folder_type=io.FolderType.temp, cls=None, compress_level=1)
        return io.NodeOutput(composite, mask, ui={BACKGROUND_UI_KEY: saved})


