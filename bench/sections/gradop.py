"""GradOP+ at defaults against the SDEdit node at the same steps and strength, per image.

Both at 50 ddim_uniform steps, euler, cfg 7.5, strength 0.8. SDEdit runs twice: with the
paper's semantics (50 UNet steps from t0, the same UNet work as GradOP+) and with diffusers
semantics (the last 40 steps, the reference's img2img). GradOP+ rows vary the decoder used
inside the optimisation. Memory rows measure the extra peak tensor memory of one optimisation step
(decode -> clamp -> blur -> MSE -> backward) through the full-size SD VAE decoder architecture, with
and without checkpointing (GS_BENCH_DECODER_PIXELS, GS_BENCH_DECODER_DTYPES=fp32,bf16 to change them).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import device_and_sync, device_name, harness, interleaved

TITLE = "GradOP+ (defaults: 3 x 12 Adam steps) vs SDEdit node, 50 steps, strength 0.8"


def _vae_approx_with_random_taesd(tiny) -> None:
    import folder_paths
    from safetensors.torch import save_file
    folder = Path(tempfile.mkdtemp(prefix="gs-bench-vae-approx-"))
    save_file(tiny.taesd_decoder_state_dict(0), str(folder / "taesd_decoder.safetensors"))
    folder_paths.add_model_folder_path("vae_approx", str(folder), is_default=True)


def bench_case(host, label: str, full_size: bool, pixels: int, rounds: int) -> list[dict]:
    import torch
    tiny = harness.test_nodes_module().tiny
    _vae_approx_with_random_taesd(tiny)
    mappings = host.nodes.NODE_CLASS_MAPPINGS
    gradop_node, sdedit_node = mappings["GS_GradOPPlus"], mappings["GS_SDEdit"]
    device, sync = device_and_sync()
    with torch.inference_mode():
        model = tiny.tiny_model("sd15", 0, full_size=full_size)
        vaes = {"KL": tiny.tiny_kl_vae(0, full_size=full_size), "TAESD-shaped": tiny.tiny_vae(0)}
        cond, uncond = tiny.random_conditioning("sd15", 1), tiny.random_conditioning("sd15", 2)
        strokes = torch.rand(1, pixels, pixels, 3, generator=torch.Generator().manual_seed(0))
        latent = {"samples": torch.randn(1, 4, pixels // 8, pixels // 8, generator=torch.Generator().manual_seed(0))}

        def gradop(vae, decoder, resolution="full", memory="full"):
            return lambda: gradop_node.execute(model, cond, uncond, 1, 50, 7.5, "euler", "ddim_uniform", vae, strokes,
                                               0.8, 3, 12, 0.1, "gaussian blur", decoder, resolution, "GradOP+",
                                               0.001, 0, 0, 1, decoder_memory=memory)

        def sdedit(semantics):
            return lambda: sdedit_node.execute(model, cond, uncond, 1, 50, 7.5, "euler", "ddim_uniform", 0.8,
                                               semantics, 1, "", latent=latent)

        reduced = "bf16" if device.type == "cuda" else "fp32"
        fns = {
            "SDEdit (paper, 50 UNet steps)": sdedit("paper"),
            "SDEdit (diffusers, 40 UNet steps)": sdedit("diffusers"),
            f"GradOP+ KL decoder {reduced}": gradop(vaes["KL"], reduced),
            f"GradOP+ KL decoder {reduced}, checkpointed": gradop(vaes["KL"], reduced, memory="checkpointed"),
            f"GradOP+ KL decoder {reduced}, half-res loss": gradop(vaes["KL"], reduced, "half"),
            "GradOP+ TAESD decoder (vae_approx)": gradop(vaes["KL"], "taesd"),
        }
        times = interleaved(fns, sync, rounds)
    base = times["SDEdit (paper, 50 UNet steps)"]
    img2img = times["SDEdit (diffusers, 40 UNet steps)"]
    return [{"case": label, "device": device_name(device), "method": name, "seconds": seconds,
             "vs_paper": seconds / base, "vs_diffusers": seconds / img2img} for name, seconds in times.items()]


def decoder_peak_bytes(pixels: int, dtype_name: str, checkpointed: bool) -> int:
    """Extra peak tensor memory of one optimisation step through the full-size SD VAE decoder
    (decode -> clamp -> blur -> MSE -> backward), measured op by op (devkit/memory_probe.py)."""
    import torch
    from devkit import memory_probe
    tiny = harness.test_nodes_module().tiny
    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    guidance = harness.loaded_module(f"{harness.PACK_NAME}.guidance.gradop")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    with torch.inference_mode():
        vae = tiny.tiny_kl_vae(0, full_size=True)
        with gradients.DifferentiableDecoder(vae, dtype, checkpointed=checkpointed) as decoder, \
                gradients.grad_enabled():
            z = torch.randn(1, 4, pixels // 8, pixels // 8, device=decoder.device, requires_grad=True)
            kernel, sigma = guidance.blur_parameters(pixels, pixels)
            target = torch.rand(1, 3, pixels, pixels, device=decoder.device)

            def step():
                image = decoder.decode(z, clamp=True)
                guidance.painting_loss(guidance.gaussian_blur(image, kernel, sigma), target).sum().backward()

            return memory_probe.peak_extra_bytes(step)


def run(host) -> None:
    import torch

    rows = bench_case(host, "tiny SD1.x UNet + tiny KL VAE, 128x128", False, 128, 3)
    if torch.cuda.is_available():
        rows += bench_case(host, "full-size SD1.5 UNet + SD VAE (random weights), 512x512", True, 512, 3)
    print(f"{'case':52} {'device':26} {'method':42} {'s/image':>8} {'vs SDEdit paper':>15} {'vs diffusers':>12}")
    for row in rows:
        print(f"{row['case']:52} {row['device']:26} {row['method']:42} {row['seconds']:8.2f} "
              f"{row['vs_paper']:15.2f} {row['vs_diffusers']:12.2f}")
    print("targets (per image, vs SDEdit at the same steps): <= 1.6x full decoder in reduced precision, "
          "<= 1.15x TAESD decoder")
    import os
    pixels = int(os.environ.get("GS_BENCH_DECODER_PIXELS", "512"))
    for dtype_name in os.environ.get("GS_BENCH_DECODER_DTYPES", "fp32").split(","):
        full = decoder_peak_bytes(pixels, dtype_name, False) / 2 ** 30
        checkpointed = decoder_peak_bytes(pixels, dtype_name, True) / 2 ** 30
        print(f"extra peak memory, one optimisation step through the SD VAE decoder at {pixels}x{pixels} "
              f"({dtype_name}, measured op by op): {full:.2f} GiB, checkpointed {checkpointed:.2f} GiB "
              f"(target: <= 4 GB)")
