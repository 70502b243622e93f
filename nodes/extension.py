"""The pack's ComfyExtension: the list of nodes it registers.

Each capability module in nodes/ exposes ``NODES``, the node classes it contributes. get_node_list is
also the pack's load-time hook (ComfyUI 0.3.75 calls it once per start and never calls ``on_load``): it
registers the model folders, copies the example workflows' paintings into the input folder and installs the
server's check of widget value types (ComfyUI would turn the string "false" into true).
"""
from __future__ import annotations

import importlib
from typing import Callable

from comfy_api.latest import ComfyExtension, io

from . import examples, folders, host

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
        install_prompt_check(nodes)
        return nodes


def prompt_check(nodes) -> Callable[[dict], dict]:
    """The on-prompt hook that refuses wrong-typed widget values of the pack's ``nodes`` (host.check_prompt_types)."""
    classes = {node.GET_SCHEMA().node_id: node for node in nodes}

    def check(json_data: dict) -> dict:
        return host.check_prompt_types(json_data, classes)
    check.guided_synthesis = True
    return check


def install_prompt_check(nodes) -> None:
    """Registers :func:`prompt_check` with the running server (POST /prompt calls it before validation); a host
    without a server (tests in-process) gets none."""
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None or not hasattr(instance, "add_on_prompt_handler"):
        return
    if not any(getattr(handler, "guided_synthesis", False) for handler in instance.on_prompt_handlers):
        instance.add_on_prompt_handler(prompt_check(nodes))
