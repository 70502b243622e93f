"""The pack's ComfyExtension: the list of nodes it registers.

Each capability module in nodes/ exposes ``NODES``, the node classes it contributes. get_node_list is
also the pack's load-time hook (ComfyUI 0.3.75 calls it once per start and never calls ``on_load``): it
registers the model folders and copies the example workflows' paintings into the input folder.
"""
from __future__ import annotations

import importlib

from comfy_api.latest import ComfyExtension, io

from . import examples, folders

NODE_PREFIX = "GS_"
CATEGORY_ROOT = "guided_synthesis"
CAPABILITY_MODULES = ("sdedit", "gradop", "canvas", "regions", "semantic", "panorama")


class GuidedSynthesisExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        folders.register_model_folders()
        examples.install_example_inputs()  # never raises; logs what it cannot copy
        nodes: list[type[io.ComfyNode]] = []
        for name in CAPABILITY_MODULES:
            nodes.extend(importlib.import_module(f"{__package__}.{name}").NODES)
        return nodes
