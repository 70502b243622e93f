"""The pack's ComfyExtension: the nodes it registers (an explicit list) and its start-up work.

``get_node_list`` only lists: no files are read or written there. The start-up work (``on_load``: the model
folders registered with folder_paths, the example workflows' paintings copied into the input folder, the
server's check of widget value types installed) runs once; ComfyUI 0.3.75 never calls ``on_load``, so the
entrypoint calls it (``start``) before handing the extension over, and a host that calls it again finds it done.
"""
from __future__ import annotations

from typing import Callable

from comfy_api.latest import ComfyExtension, io

from . import canvas, gradop, regions, sdedit, semantic
from .panorama import seamless_decode, sync_diffusion
from .toolkit import examples, host, model_files

NODES: list[type[io.ComfyNode]] = [
    sdedit.SDEdit,
    sdedit.SDEditSigmas,
    gradop.GradOPPlus,
    gradop.GradOPPlusSampler,
    canvas.StrokeCanvas,
    regions.StrokeRegions,
    semantic.OpenCLIPLoader,
    semantic.CLIPSemanticGuidance,
    sync_diffusion.SyncDiffusion,
    sync_diffusion.SyncDiffusionSampler,
    seamless_decode.SeamlessDecode,
]


class GuidedSynthesisExtension(ComfyExtension):
    started = False

    async def on_load(self) -> None:
        if GuidedSynthesisExtension.started:
            return
        GuidedSynthesisExtension.started = True
        model_files.register_model_folders()
        examples.install_example_inputs()  # never raises; logs what it cannot copy
        install_prompt_check(NODES)

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


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
