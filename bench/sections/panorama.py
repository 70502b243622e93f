"""SyncDiffusion vs this pack's MultiDiffusion mode (full VAE decoder and TAESD in the loss) at the same canvas,
steps and windows; and MultiDiffusion on a one-window canvas vs plain KSampler at that size (the tiling
overhead). Tiny models on the CPU (a seeded random VGG16 trunk for LPIPS); GPU rows are not measured here.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import device_and_sync, device_name, harness, interleaved

TITLE = "SyncDiffusion vs MultiDiffusion (same canvas, steps, windows) and MultiDiffusion vs KSampler at one window"
# the reference's proportions: sync in the first fifth of the steps (10 of 50 there)
WIDTH, HEIGHT, WINDOW, STRIDE, STEPS, SYNC_STEPS = 96, 32, 32, 16, 10, 2


def _model_folders(tiny) -> None:
    import folder_paths
    from safetensors.torch import save_file
    approx = Path(tempfile.mkdtemp(prefix="gs-bench-vae-approx-"))
    save_file(tiny.taesd_decoder_state_dict(0), str(approx / "taesd_decoder.safetensors"))
    folder_paths.add_model_folder_path("vae_approx", str(approx), is_default=True)
    lpips_dir = Path(tempfile.mkdtemp(prefix="gs-bench-lpips-"))
    harness.write_lpips_trunks(lpips_dir, ("vgg",))
    folder_paths.add_model_folder_path("lpips", str(lpips_dir), is_default=True)


def run(host) -> None:
    import torch
    tiny = harness.test_nodes_module().tiny
    _model_folders(tiny)
    mappings = host.nodes.NODE_CLASS_MAPPINGS
    node, ksampler = mappings["GS_SyncDiffusion"], mappings["KSampler"]()
    device, sync = device_and_sync()
    windows = len(range(0, WIDTH - WINDOW + 1, STRIDE))
    with torch.inference_mode():
        model = tiny.tiny_model("sd15", 0)
        vae = tiny.tiny_kl_vae(0)
        cond, uncond = tiny.random_conditioning("sd15", 1), tiny.random_conditioning("sd15", 2)

        def panorama(width, weight, decoder):
            return lambda: node.execute(model, cond, uncond, vae, width, HEIGHT, 1, 1, STEPS, 7.5, "euler",
                                        "ddim_uniform", WINDOW, STRIDE, weight, 0.95, SYNC_STEPS, 1, -1, "vgg",
                                        decoder, "exact", False, 4, sync_batch=1)

        latent = {"samples": torch.zeros(1, 4, HEIGHT // 8, WINDOW // 8)}
        fns = {
            "MultiDiffusion (sync_weight 0)": panorama(WIDTH, 0.0, "auto"),
            "SyncDiffusion, full VAE decoder in the loss": panorama(WIDTH, 20.0, "auto"),
            "SyncDiffusion, TAESD in the loss": panorama(WIDTH, 20.0, "taesd"),
            "MultiDiffusion, one-window canvas": panorama(WINDOW, 0.0, "auto"),
            "KSampler, one window": lambda: ksampler.sample(model, 1, STEPS, 7.5, "euler", "ddim_uniform", cond,
                                                            uncond, latent),
        }
        times = interleaved(fns, sync, 1)
    multi = times["MultiDiffusion (sync_weight 0)"]
    print(f"canvas {WIDTH}x{HEIGHT} px, window {WINDOW} px, stride {STRIDE} px ({windows} windows), {STEPS} steps, "
          f"sync in the first {SYNC_STEPS}; {device_name(device)}")
    print(f"{'method':48} {'seconds':>8} {'vs MultiDiffusion':>18}")
    for name, seconds in times.items():
        print(f"{name:48} {seconds:8.2f} {seconds / multi:18.2f}")
    print(f"MultiDiffusion one-window canvas vs KSampler at that size: "
          f"{times['MultiDiffusion, one-window canvas'] / times['KSampler, one window']:.2f}x")
    import os
    if os.environ.get("GS_BENCH_PANORAMA_FULL_SIZE", "1") != "0":
        full_size()


REFERENCE_SETTING = {"steps": 50, "sync_steps": 10, "windows": 21}  # 512x3072, stride 128 px (16 latent)


def full_size(latent: int = 64) -> None:
    """Full-size SD1.5 pieces with random weights, at a 512 px window: the extra peak memory of one window's
    gradient pass at a sync step (UNet CFG pair, x0, the SD VAE decoder, clamp, LPIPS VGG against a fixed
    anchor, backward to the window's latent), measured op by op in fp32 (devkit/memory_probe.py), and the time
    of each piece, from which the reference's setting (512x3072, stride 128 px, sync in 10 of 50 steps) is
    costed against MultiDiffusion for each option. Needs about 20 GB of RAM and some CPU minutes."""
    import torch
    from bench.common import FullSizeSD15, forward_only, interleaved, print_sync_cost_rows
    from devkit import memory_probe
    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    lpips_model = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.lpips_model")
    sd = FullSizeSD15(latent)
    device, sync = sd.device, sd.sync
    with torch.inference_mode(False):
        import lpips
        distance = lpips_model.LPIPSDistance(lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
                                             .requires_grad_(False).eval().to(device))
        pixels = latent * 8
        anchor = torch.rand(1, 3, pixels, pixels, device=device)
        memory, pieces = {}, {}
        with gradients.grad_enabled():
            for label, checkpointed, jacobian in (("full decoder", False, True), ("checkpointed decoder", True, True),
                                                  ("checkpointed decoder, unet_jacobian none", True, False)):
                with gradients.DifferentiableDecoder(sd.vae, torch.float32, checkpointed=checkpointed) as decoder:
                    x = sd.latent_like()

                    def step():
                        image = decoder.decode(sd.x0(x, jacobian) / 0.18215, clamp=True)
                        distance(image, anchor).sum().backward()

                    memory[label] = memory_probe.peak_extra_bytes(step) / 2 ** 30
            x, z = sd.latent_like(), sd.latent_like()
            image = torch.rand(1, 3, pixels, pixels, device=device, requires_grad=True)
            with gradients.DifferentiableDecoder(sd.vae, torch.float32) as decoder, \
                    gradients.DifferentiableDecoder(sd.taesd, torch.float32) as fast:
                pieces["U"] = forward_only(lambda: sd.x0(x))
                pieces["D"] = forward_only(lambda: decoder.decode(z))
                pieces["T"] = forward_only(lambda: fast.decode(z))
                pieces["L"] = forward_only(lambda: distance(image, anchor))
                pieces["Ug"] = lambda: sd.x0(x).sum().backward()
                pieces["Dg"] = lambda: decoder.decode(z).sum().backward()
                pieces["Tg"] = lambda: fast.decode(z).sum().backward()
                pieces["Lg"] = lambda: distance(image, anchor).sum().backward()
                half = torch.rand(1, 3, pixels // 2, pixels // 2, device=device, requires_grad=True)
                half_anchor = torch.rand(1, 3, pixels // 2, pixels // 2, device=device)
                pieces["Lg/2"] = lambda: distance(half, half_anchor).sum().backward()
                costs = interleaved(pieces, sync, 1)  # one warm-up call each, then one timed
    for label, gib in memory.items():
        print(f"extra peak memory of one window's sync gradient pass, SD1.5 at {pixels}x{pixels}, fp32, {label} "
              f"(measured op by op): {gib:.2f} GiB; fp16/bf16 about half")
    print(f"full-size pieces on {device_name(device)} (seconds, one {pixels} px window): " +
          ", ".join(f"{k} {v:.2f}" for k, v in costs.items()) +
          "  (U: CFG pair UNet forward, D/T: SD VAE / TAESD decode, L: LPIPS VGG; g: forward + backward)")
    steps, sync_steps, windows = (REFERENCE_SETTING[k] for k in ("steps", "sync_steps", "windows"))
    print(f"the reference's setting ({windows} windows, sync in {sync_steps} of {steps} steps) costed from these "
          f"pieces, vs MultiDiffusion:")
    print_sync_cost_rows(costs, steps, sync_steps, windows)
