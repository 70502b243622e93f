"""SyncDiffusion vs this pack's MultiDiffusion mode (full VAE decoder and TAESD in the loss) at the same canvas,
steps and windows; and MultiDiffusion on a one-window canvas vs plain KSampler at that size (the tiling
overhead). Tiny models on the CPU (a seeded random VGG16 trunk for LPIPS); GPU rows are not measured here.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import device_and_sync, device_name, harness, interleaved

TITLE = "SyncDiffusion vs MultiDiffusion (same canvas, steps, windows) and MultiDiffusion vs KSampler at one window"
WIDTH, HEIGHT, WINDOW, STRIDE, STEPS, SYNC_STEPS = 96, 32, 32, 16, 4, 2


def _model_folders(tiny) -> None:
    import folder_paths
    from safetensors.torch import save_file
    sys.path.insert(0, str(harness.TESTS))
    import conftest
    approx = Path(tempfile.mkdtemp(prefix="gs-bench-vae-approx-"))
    save_file(tiny.taesd_decoder_state_dict(0), str(approx / "taesd_decoder.safetensors"))
    folder_paths.add_model_folder_path("vae_approx", str(approx), is_default=True)
    lpips_dir = Path(tempfile.mkdtemp(prefix="gs-bench-lpips-"))
    conftest.write_lpips_trunks(lpips_dir, ("vgg",))
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
