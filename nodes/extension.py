"""The pack's ComfyExtension: the list of nodes it registers."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import folders, sdedit

NODE_PREFIX = "GS_"
CATEGORY_ROOT = "guided_synthesis"


class GuidedSynthesisExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        folders.register_model_folders()
        return [
            sdedit.SDEditSampler,
            sdedit.SDEditSigmas,
        ]
