"""Test-only stand-in for GS_StrokeCanvas at a small size (loaded from devkit/host_nodes/, never shipped).

Example workflows paint at 512 px; tests run the real Stroke Canvas node on that painting and then
downscale its IMAGE and MASK (longest side ``size``, multiples of 8), as GS_TestLoadImageSmall does for
LoadImage, so the tiny models sample 64 px images.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io


class StrokeCanvasSmall(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestStrokeCanvasSmall", display_name="Stroke Canvas Small (test)",
                         category="guided_synthesis_tests",
                         inputs=[io.String.Input("painting", default=""), io.Int.Input("width", default=512),
                                 io.Int.Input("height", default=512),
                                 io.String.Input("background_color", default="#ffffff"),
                                 io.Int.Input("size", default=64, min=8, max=4096),
                                 io.Image.Input("image", optional=True)],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, painting, width, height, background_color, size, image=None) -> io.NodeOutput:
        import comfy.utils
        import nodes

        canvas = nodes.NODE_CLASS_MAPPINGS["GS_StrokeCanvas"]
        pixels, mask = canvas.execute(painting, width, height, background_color, image).result
        scale = size / max(pixels.shape[1], pixels.shape[2])
        h = max(8, round(pixels.shape[1] * scale / 8) * 8)
        w = max(8, round(pixels.shape[2] * scale / 8) * 8)
        pixels = comfy.utils.common_upscale(pixels.movedim(-1, 1), w, h, "area", "disabled").movedim(1, -1)
        mask = comfy.utils.common_upscale(mask.unsqueeze(1), w, h, "area", "disabled")[:, 0]
        return io.NodeOutput(pixels, mask)


class CanvasTestNodes(ComfyExtension):
    async def get_node_list(self):
        return [StrokeCanvasSmall]


async def comfy_entrypoint():
    return CanvasTestNodes()
