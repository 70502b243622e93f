"""Guided Synthesis: stroke-, text- and image-guided diffusion methods as ComfyUI nodes.

Thin V3 entrypoint. Importing this file does nothing else: no CUDA, no network, no models.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import GuidedSynthesisExtension

    extension = GuidedSynthesisExtension()
    await extension.on_load()  # ComfyUI 0.3.75 never calls on_load itself; a later call finds it done
    return extension


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
