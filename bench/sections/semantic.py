"""CLIP semantic guidance: guided vs unguided sampling at the same steps (KSampler, tiny models)."""
from __future__ import annotations

import os

from bench.common import device_and_sync, device_name, harness, interleaved

TITLE = "CLIP Semantic Guidance: guided vs unguided sampling (KSampler, same steps, tiny SD1.x + tiny open_clip)"


def _taesd_folder(tiny) -> None:
    """A models/vae_approx folder with a tiny TAESD decoder, for the 'taesd' decoder rows."""
    import tempfile
    from pathlib import Path

    import folder_paths
    from safetensors.torch import save_file
    folder = Path(tempfile.mkdtemp(prefix="gs-bench-taesd-"))
    save_file(tiny.taesd_decoder_state_dict(3), str(folder / "taesd_decoder.safetensors"))
    folder_paths.add_model_folder_path("vae_approx", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("vae_approx", None)


def bench_case(host, label: str, pixels: int, steps: int, rounds: int, decoder: str, every: int, cutouts: int,
               vae_kind: str) -> dict:
    import torch

    test_nodes = harness.test_nodes_module()
    tiny, probes = test_nodes.tiny, test_nodes.semantic_probes
    node = host.nodes.NODE_CLASS_MAPPINGS["GS_CLIPSemanticGuidance"]
    ksampler = host.nodes.KSampler()
    device, sync = device_and_sync()
    clip = probes.open_clip_module().OpenCLIP.wrap(probes.tiny_open_clip("vit", 0), probes.KINDS["vit"], "auto")
    with torch.inference_mode():
        model = tiny.tiny_model("sd15", 0)
        vae = tiny.tiny_kl_vae(0) if vae_kind == "kl" else tiny.tiny_vae(0)
        positive, negative = tiny.random_conditioning("sd15", 1), tiny.random_conditioning("sd15", 2)
        guided = node.execute(model, vae, clip, "a red apple", 0.3, 0.0, "content", cutouts, 0.0, 1.0, every,
                              decoder, "normalised").args[0]
        latent = {"samples": torch.zeros(1, 4, pixels // 8, pixels // 8)}

        def ours():
            ksampler.sample(guided, 1, steps, 7.5, "euler", "normal", positive, negative, latent)

        def theirs():
            ksampler.sample(model, 1, steps, 7.5, "euler", "normal", positive, negative, latent)

        times = interleaved({"guided": ours, "plain": theirs}, sync, rounds)
    return {"label": label, "device": device_name(device), **times, "ratio": times["guided"] / times["plain"]}


def run(host) -> None:
    tiny = harness.test_nodes_module().tiny
    _taesd_folder(tiny)
    rows = [
        bench_case(host, "64x64, 6 steps, taesd decoder, every 2 steps, 2 cutouts", 64, 6, 2, "taesd", 2, 2, "kl"),
        bench_case(host, "64x64, 6 steps, full (KL) VAE decoder, every step, 2 cutouts", 64, 6, 2, "auto", 1, 2, "kl"),
    ]
    print(f"{'case':66} {'device':20} {'guided s':>9} {'plain s':>8} {'ratio':>6}")
    for row in rows:
        print(f"{row['label']:66} {row['device']:20} {row['guided']:9.3f} {row['plain']:8.3f} {row['ratio']:6.2f}")
    print("tiny random models: the ratios show the relative cost of decode + CLIP + backward per guided step "
          "against a toy UNet, not what a real SD1.5 costs (docs/methods/semantic.md section 6)")
    if os.environ.get("GS_BENCH_SEMANTIC_FULL_SIZE", "1") != "0":
        full_size()


def full_size(latent: int = 64, cutouts: int = 4) -> None:
    """Full-size pieces with random weights at 512x512: the SD1.5 UNet's CFG pair (U), the SD VAE decoder, TAESD
    and the decoder on a 2x-pooled latent forward + backward, and a ViT-B-32 open_clip image tower forward +
    backward on ``cutouts`` 224 px views; the guided / unguided ratio of each option is costed from them
    (guidance adds decode + CLIP with backward at each guided step; no UNet backward)."""
    import open_clip
    import torch
    from bench.common import FullSizeSD15, forward_only, interleaved
    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    sd = FullSizeSD15(latent)
    device, sync = sd.device, sd.sync
    pieces = {}
    with torch.inference_mode(False):
        clip = open_clip.create_model("ViT-B-32", pretrained=None).to(device).eval().requires_grad_(False)
        views = torch.rand(cutouts, 3, 224, 224, device=device, requires_grad=True)
        x = sd.latent_like(requires_grad=False)
        z, pooled = sd.latent_like(), sd.latent_like(scale=2)
        with gradients.grad_enabled(), gradients.DifferentiableDecoder(sd.vae, torch.float32) as decoder, \
                gradients.DifferentiableDecoder(sd.taesd, torch.float32) as fast:
            pieces["U"] = forward_only(lambda: sd.x0(x))
            pieces["VAE"] = lambda: decoder.decode(z).sum().backward()
            pieces["TAESD"] = lambda: fast.decode(z).sum().backward()
            pieces["pooled"] = lambda: decoder.decode(pooled).sum().backward()
            pieces["CLIP"] = lambda: clip.encode_image(views).sum().backward()
            costs = interleaved(pieces, sync, 1)  # one warm-up call each, then one timed
    print(f"full-size pieces on {device_name(device)} (seconds at {latent * 8}x{latent * 8}): " +
          ", ".join(f"{k} {v:.2f}" for k, v in costs.items()) +
          f"  (U: CFG pair UNet forward; decoders and CLIP ViT-B-32 on {cutouts} views: forward + backward)")
    print("guided / unguided sampling at the same steps, costed from these pieces:")
    for name, decoder_key, share in (("full VAE decoder, every step", "VAE", 1.0),
                                      ("full VAE decoder, every 2 steps", "VAE", 0.5),
                                      ("downscaled latent, every step", "pooled", 1.0),
                                      ("taesd, every step", "TAESD", 1.0),
                                      ("taesd, every 2 steps", "TAESD", 0.5)):
        print(f"  {name:36} {1 + share * (costs[decoder_key] + costs['CLIP']) / costs['U']:5.2f}x")
