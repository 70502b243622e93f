"""The pack's ComfyExtension: the list of nodes it registers.

Each capability module in nodes/ exposes ``NODES``, the node classes it contributes.
"""
from __future__ import annotations

import importlib

from comfy_api.latest import ComfyExtension, io

from . import folders

NODE_PREFIX = "GS_"
CATEGORY_ROOT = "guided_synthesis"
CAPABILITY_MODULES = ("sdedit", "gradop", "canvas", "regions", "panorama")


class GuidedSynthesisExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        folders.register_model_folders()
        nodes: list[type[io.ComfyNode]] = []
        for name in CAPABILITY_MODULES:
            nodes.extend(importlib.import_module(f"{__package__}.{name}").NODES)
        return nodes
