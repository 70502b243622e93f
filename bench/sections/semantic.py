"""CLIP semantic guidance: guided vs unguided sampling at the same steps (KSampler, tiny models)."""
from __future__ import annotations

from common import device_and_sync, device_name, harness, interleaved

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
    semantic_nodes = harness.loaded_module("nodes.semantic")
    node = host.nodes.NODE_CLASS_MAPPINGS["GS_CLIPSemanticGuidance"]
    ksampler = host.nodes.KSampler()
    device, sync = device_and_sync()
    clip = semantic_nodes.OpenCLIP.wrap(probes.tiny_open_clip("vit", 0), probes.KINDS["vit"], "auto")
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
