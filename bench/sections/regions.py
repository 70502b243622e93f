"""Stroke Regions to Words: the patched model against the unpatched one, same KSampler settings."""
from __future__ import annotations

from bench.common import device_and_sync, device_name, harness, interleaved

TITLE = "Stroke Regions to Words: patched vs unpatched model (KSampler, same steps, 5 regions)"

PROMPT = ("a photograph of snowy mountains above a calm lake at sunset, a setting sun in the evening sky, "
          "a green meadow in front")
SPEC = "#6eaaeb: evening sky\n#fad250: setting sun\n#5f5a78: snowy mountains\n#2864aa: calm lake\n#46963c: green meadow"


def bench_case(host, label: str, full_size: bool, pixels: int, steps: int, rounds: int, mode: str) -> dict:
    import numpy as np
    import torch
    from scripts.workflow_builder import stroke_painting

    tiny = harness.test_nodes_module().tiny
    regions_node = host.nodes.NODE_CLASS_MAPPINGS["GS_StrokeRegions"]
    ksampler = host.nodes.KSampler()
    device, sync = device_and_sync()
    with torch.inference_mode():
        model = tiny.tiny_model("sd15", 0, full_size=full_size)
        clip = tiny.tiny_clip(0)
        stroke = torch.from_numpy(np.asarray(stroke_painting(pixels)).copy()).float().div(255).unsqueeze(0)
        out = regions_node.execute(model, clip, stroke, PROMPT, SPEC, 0.4, mode, 0.0, 1.0, "append")
        patched, positive = out.args[0], out.args[1]
        negative = tiny.random_conditioning("sd15", 2)
        latent = {"samples": torch.zeros(1, 4, pixels // 8, pixels // 8)}

        def ours():
            ksampler.sample(patched, 1, steps, 7.5, "euler", "normal", positive, negative, latent)

        def theirs():
            ksampler.sample(model, 1, steps, 7.5, "euler", "normal", positive, negative, latent)

        times = interleaved({"patched": ours, "plain": theirs}, sync, rounds)
    return {"label": label, "device": device_name(device), **times, "ratio": times["patched"] / times["plain"]}


def flux_case(mode: str, rounds: int) -> dict:
    """One Flux.1 double and one single block at full width (random weights) with and without the region
    override on their joint attention; the model call's ratio is 19 double + 38 single blocks of each. CUDA: 4096
    image + 512 text tokens (1024^2); CPU: 1024 + 128 tokens (the ratio at a smaller sequence: the attention's
    share, and so the mask's, grows with the sequence, so the CPU ratio understates the full-size one)."""
    import math

    import torch

    from bench.sections.flux import DOUBLE_BLOCKS, HIDDEN, SINGLE_BLOCKS, full_width_blocks
    from bench.common import forward_only

    regions_node = harness.loaded_module(f"{harness.PACK_NAME}.nodes.regions")
    regions = harness.loaded_module(f"{harness.PACK_NAME}.guidance.regions")
    device, sync = device_and_sync()
    image_tokens, text_tokens = (4096, 512) if device.type == "cuda" else (1024, 128)
    side = math.isqrt(image_tokens)
    masks = torch.zeros(5, side, side)
    for r in range(5):  # five horizontal bands, as the stroke painting's regions
        masks[r, r * side // 5:(r + 1) * side // 5] = 1
    token_masks = torch.zeros(5, text_tokens)
    for r in range(5):
        token_masks[r, 2 + 3 * r: 4 + 3 * r] = 1
    region = regions.RegionAttention(masks=masks, token_masks=token_masks, strength=0.4, mode=mode,
                                     sigma_to_t=lambda sigma: 0.9)
    patched_options = {"optimized_attention_override": regions_node.JointRegionOverride(region),
                       regions_node.LAYOUT_KEY: (text_tokens, (side, side)), "cond_or_uncond": [0],
                       "sigmas": torch.tensor([0.9])}
    with torch.inference_mode(False), torch.no_grad():
        double, single, pe = full_width_blocks(device, image_tokens, text_tokens)
        generator = torch.Generator().manual_seed(0)
        img = torch.randn(1, image_tokens, HIDDEN, generator=generator).to(device)
        txt = torch.randn(1, text_tokens, HIDDEN, generator=generator).to(device)
        joint = torch.cat([txt, img], dim=1)
        vec = torch.randn(1, HIDDEN, generator=generator).to(device)

        def run_double(options):
            return lambda: double(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe, transformer_options=dict(options))

        def run_single(options):
            return lambda: single(joint.clone(), vec=vec, pe=pe, transformer_options=dict(options))

        pieces = {"double patched": forward_only(run_double(patched_options)), "double": forward_only(run_double({})),
                  "single patched": forward_only(run_single(patched_options)), "single": forward_only(run_single({}))}
        times = interleaved(pieces, sync, rounds)
    patched = DOUBLE_BLOCKS * times["double patched"] + SINGLE_BLOCKS * times["single patched"]
    plain = DOUBLE_BLOCKS * times["double"] + SINGLE_BLOCKS * times["single"]
    return {"label": f"Flux.1 dev blocks x 19+38 (full width, {image_tokens}+{text_tokens} tokens), {mode}",
            "device": device_name(device), "patched": patched, "plain": plain, "ratio": patched / plain}


def run(host) -> None:
    import torch

    rows = [bench_case(host, f"tiny SD1.x UNet, 256x256, 10 steps, {mode}", False, 256, 10, 4, mode)
            for mode in ("paint_with_words", "dense")]
    rows += [flux_case(mode, 3) for mode in ("paint_with_words", "dense")]
    if torch.cuda.is_available():
        for mode in ("paint_with_words", "dense"):
            rows.append(bench_case(host, f"full-size SD1.5 UNet (random weights), 512x512, 30 steps, {mode}", True,
                                   512, 30, 5, mode))
    print(f"{'case':72} {'device':28} {'patched s':>9} {'plain s':>8} {'ratio':>6}")
    for row in rows:
        print(f"{row['label']:72} {row['device']:28} {row['patched']:9.3f} {row['plain']:8.3f} {row['ratio']:6.3f}")
    worst = max(row["ratio"] for row in rows)
    print(f"overhead target <= 1.10: {'met' if worst <= 1.10 else 'NOT met'} (worst {worst:.3f})")
