"""Gradient probes that exercise the pack's gradient recipe inside a real executor run."""
from __future__ import annotations

import importlib
import sys

import torch

import comfy.model_management


def pack_module(name: str):
    """A module of the Guided Synthesis pack as ComfyUI loaded it (by file location)."""
    for module_name, module in list(sys.modules.items()):
        if module_name.endswith(f".{name}") and "guided_synthesis" in module_name.replace("_x_", "."):
            return module
    for module_name in list(sys.modules):
        if module_name.endswith("guided_synthesis") or module_name.endswith("guided_synthesis_x_"):
            return importlib.import_module(f"{module_name}.{name}")
    raise RuntimeError(f"the Guided Synthesis pack is not loaded (looking for {name})")


def gradient_norms(model, vae, latent, positive, sigma: float, use_recipe: bool = True) -> dict:
    """d(loss)/d(latent) through (a) the UNet's x0 prediction, (b) the VAE decoder.

    ``use_recipe=False`` backpropagates through the upstream model as is (the naive path, which fails).
    """
    gradients = pack_module("nodes.toolkit.gradients")
    grad_model = gradients.differentiable_model(model) if use_recipe else model
    comfy.model_management.load_models_gpu([grad_model])
    base = grad_model.model
    device = grad_model.load_device
    with gradients.grad_enabled():
        x = base.process_latent_in(gradients.owned(latent["samples"]).to(device))
        x = (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device))
        x = x.detach().requires_grad_(True)
        cond = gradients.owned(positive[0][0]).to(device)
        timestep = torch.full((x.shape[0],), float(sigma), device=device)
        x0 = base.apply_model(x, timestep, c_crossattn=cond)
        (grad_unet,) = torch.autograd.grad(x0.float().square().mean(), x)

        z = gradients.owned(latent["samples"]).to(vae.device).requires_grad_(True)
        with gradients.DifferentiableDecoder(vae) as decoder:
            image = decoder.decode(z)
            (grad_vae,) = torch.autograd.grad(image.square().mean(), z)
    return {
        "unet_norm": float(grad_unet.norm()), "unet_finite": bool(torch.isfinite(grad_unet).all()),
        "vae_norm": float(grad_vae.norm()), "vae_finite": bool(torch.isfinite(grad_vae).all()),
        "image_shape": list(image.shape),
    }
