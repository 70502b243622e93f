"""Test-only oracle for the panorama sampler: SyncDiffusion written out in plain torch from the algorithm
(docs/methods/panorama.md section 2), NOT using guidance/panorama.py: per-window nudge, per-window
Euler/DDIM step, per-pixel average. One row of windows at a fixed stride (the last flush with the edge)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.samplers
import comfy.utils

from .probes import pack_module

CATEGORY = "guided_synthesis_tests"


def oracle_lpips(net: str, path: str):
    """lpips.LPIPS(net) with the wheel's linear layers and the trunk from a torchvision 'features' file."""
    import lpips
    state = comfy.utils.load_torch_file(path, safe_load=True)
    with torch.inference_mode(False):
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        for block in model.net.children():
            for name, module in block.named_children():
                prefix = f"features.{name}."
                module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        model.requires_grad_(False).eval()
    return model


def oracle_sampler(vae, window: int, stride: int, sync_weight: float, decay: float, sync_steps: int,
                   lpips_file: str, net: str = "vgg", downscale: int = 1):
    gradients = pack_module("nodes.toolkit.gradients")

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        latent_format = model.inner_model.inner_model.latent_format
        width = x.shape[-1]
        lefts = list(range(0, width - window + 1, stride))
        if lefts[-1] != width - window:
            lefts.append(width - window)
        anchor = len(lefts) // 2
        s_in = x.new_ones([x.shape[0]])
        lp = oracle_lpips(net, lpips_file) if sync_weight else None
        decoder = gradients.DifferentiableDecoder(vae) if sync_weight else None
        denoiser = gradients.DifferentiableDenoiser(model, extra_args, "oracle") if sync_weight else None
        try:
            for i in range(len(sigmas) - 1):
                sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
                total = torch.zeros_like(x)
                count = torch.zeros_like(x)
                sync = sync_weight > 0 and i < sync_steps
                weight = sync_weight * decay ** i
                if sync:
                    with torch.inference_mode(False), torch.no_grad():
                        a = x[..., lefts[anchor]:lefts[anchor] + window].clone()
                        anchor_image = decoder.decode_model_space(model(a, sigma * s_in, **extra_args),
                                                                  latent_format, clamp=True)
                for v, left in enumerate(lefts):
                    xv = x[..., left:left + window].clone()
                    if sync and v != anchor:
                        with gradients.grad_enabled():
                            xg = gradients.owned(xv).requires_grad_(True)
                            image = decoder.decode_model_space(denoiser(xg, sigma), latent_format, clamp=True)
                            small, small_anchor = image, anchor_image
                            if downscale > 1:  # mean of each downscale x downscale block
                                small = image.unflatten(-1, (-1, downscale)).unflatten(-3, (-1, downscale)).mean(
                                    dim=(-3, -1))
                                small_anchor = anchor_image.unflatten(-1, (-1, downscale)).unflatten(
                                    -3, (-1, downscale)).mean(dim=(-3, -1))
                            loss = lp(small * 2 - 1, small_anchor * 2 - 1).sum()
                            (grad,) = torch.autograd.grad(loss, xg)
                        xv = xv - weight * (1 + sigma ** 2) * grad
                    x0 = model(xv, sigma * s_in, **extra_args)
                    stepped = x0 + (sigma_next / sigma) * (xv - x0)
                    total[..., left:left + window] += stepped
                    count[..., left:left + window] += 1
                x = total / count
        finally:
            if denoiser is not None:
                denoiser.close()
        return x

    return comfy.samplers.KSAMPLER(sample)


class PanoramaOracle(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestPanoramaOracle", display_name="Panorama Oracle (test)", category=CATEGORY,
                         inputs=[io.Vae.Input("vae"), io.Int.Input("window"), io.Int.Input("stride"),
                                 io.Float.Input("sync_weight", step=0.01), io.Float.Input("decay", step=0.001),
                                 io.Int.Input("sync_steps"), io.String.Input("lpips_file"),
                                 io.String.Input("net", default="vgg"),
                                 io.Int.Input("downscale", default=1, min=1, max=8, optional=True)],
                         outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, vae, window, stride, sync_weight, decay, sync_steps, lpips_file, net="vgg",
                downscale=1) -> io.NodeOutput:
        return io.NodeOutput(oracle_sampler(vae, window, stride, sync_weight, decay, sync_steps, lpips_file, net,
                                            downscale))


NODES = [PanoramaOracle]
