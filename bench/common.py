"""Helpers shared by the `make bench` sections."""
from __future__ import annotations

import statistics
import time

from devkit import harness


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(fns: dict, sync, rounds: int) -> dict:
    """Median wall time of each callable, run in interleaved rounds so drift hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (model load, kernels)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, sync))
    return {name: statistics.median(values) for name, values in times.items()}


def forward_only(fn):
    """``fn`` run under ``torch.no_grad()`` (a forward-pass timing)."""
    def run():
        import torch
        with torch.no_grad():
            return fn()
    return run


def device_and_sync():
    import torch

    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return device, sync


def device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


class FullSizeSD15:
    """Full-size SD1.5 pieces with seeded random weights on the torch device, built outside inference mode so
    autograd can run through them: the UNet as a CFG'd x0 function (cfg 7.5, sigma 10) of a [1, 4, h, w] latent,
    the SD VAE (full widths) and TAESD. Costs the same as trained weights."""

    def __init__(self, latent: int = 64):
        import torch
        tiny = harness.test_nodes_module().tiny
        self.device, self.sync = device_and_sync()
        with torch.inference_mode(False):
            self.unet = tiny.tiny_model("sd15", 0, full_size=True).model.to(self.device).requires_grad_(False)
            self.vae = tiny.tiny_kl_vae(0, full_size=True)
            self.taesd = tiny.tiny_vae(0)
            self.context = torch.randn(2, 77, 768, device=self.device)
            self.sigma = torch.tensor([10.0, 10.0], device=self.device)
        self.latent = latent

    def x0(self, x, jacobian: bool = True):
        """CFG'd x0 of ``x``; ``jacobian`` False: the identity Jacobian (the UNet runs without autograd)."""
        import torch
        pair = torch.cat([x, x]) if jacobian else torch.cat([x, x]).detach()
        out = self.unet.apply_model(pair, self.sigma, c_crossattn=self.context)
        x0 = out[:1] + 7.5 * (out[1:] - out[:1])
        return x0 if jacobian else x0 + (x - x.detach())

    def latent_like(self, requires_grad: bool = True, scale: int = 1):
        import torch
        side = self.latent // scale
        return torch.randn(1, 4, side, side, device=self.device, requires_grad=requires_grad)


def print_sync_cost_rows(costs: dict, steps: int, sync_steps: int, windows: int,
                         full_decoder_without_jacobian: bool = False) -> None:
    """SyncDiffusion's cost vs MultiDiffusion per option, from timed pieces: U (one model call), D/T (decoder
    forward), L (LPIPS), and their forward + backward Ug, Dg/Tg, Lg, Lg/2. Each synced step runs the plain
    windows once more through decoder and LPIPS, and every window but the anchor through the gradient pass. A
    row whose pieces were not timed prints n/a."""
    options = {
        "full VAE decoder (reference)": ("Ug", "D", "Dg", "Lg", sync_steps),
        "TAESD in the loss": ("Ug", "T", "Tg", "Lg", sync_steps),
        "TAESD, lpips_size 1/2": ("Ug", "T", "Tg", "Lg/2", sync_steps),
        **({"full VAE decoder, unet_jacobian none": ("U", "D", "Dg", "Lg", sync_steps)}
           if full_decoder_without_jacobian else {}),
        "TAESD, unet_jacobian none": ("U", "T", "Tg", "Lg", sync_steps),
        "TAESD, sync_every 2": ("Ug", "T", "Tg", "Lg", sync_steps // 2),
        "TAESD, unet_jacobian none, lpips_size 1/2": ("U", "T", "Tg", "Lg/2", sync_steps),
    }
    plain = steps * windows * costs["U"]
    for name, (unet_g, dec, dec_g, lp_g, count) in options.items():
        if unet_g not in costs:
            print(f"  {name:44}   n/a")
            continue
        per_step = costs["U"] + costs[dec] + costs["L"] + (windows - 1) * (costs[unet_g] + costs[dec_g] + costs[lp_g])
        print(f"  {name:44} {1 + count * per_step / plain:5.2f}x")
