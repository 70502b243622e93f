"""Flux.1 dev at 1024x1024: full-size cost-model rows (random weights), the counterpart of the SD1.5 rows of the
panorama and semantic sections.

The transformer's cost is built from one DoubleStreamBlock and one SingleStreamBlock of ``comfy.ldm.flux`` at
Flux.1's width (hidden 3072, 24 heads, MLP ratio 4; 4096 image tokens of a 1024^2 picture + 512 text tokens):
19 double + 38 single blocks per model call (embedders and the final layer are left out: under 1% of the FLOPs).
Flux.1 dev is guidance-distilled: one model call per step at cfg 1 (no CFG pair). The loss pieces are the
16-channel KL VAE decoder at full width (ch 128, mult 1-2-4-4, 2 res blocks: the Flux/SD3 VAE), a TAESD-shaped
decoder with 16 latent channels (TAEF1's layout), LPIPS VGG and open_clip ViT-B-32 on 4 views of 224 px.

On CUDA (``torch.cuda.is_available()``; one command: ``make bench SECTIONS=flux``, a few minutes at most) every
piece is timed at full size. On the CPU that would take many minutes on a small machine, so each piece is timed
at a smaller size and scaled, as printed: the blocks at 1024 + 128 tokens, scaled by the FLOP ratio
``24 T d^2 + 4 T^2 d`` (the linear layers and the joint attention of either block) of 4608 to 1152 tokens;
the decoders and LPIPS at 256^2, scaled by the pixel ratio 16 (convolutions; the VAE's mid-block attention, a
few per cent at 1024^2, grows faster, so the scaled decoder time is a slight underestimate). Scaled rows are
estimates: a CPU's FLOP rate differs between the sizes.
"""
from __future__ import annotations

import math

from devkit import harness

TITLE = "Flux.1 dev at 1024x1024: full-size cost model (random weights)"
HIDDEN, HEADS, MLP_RATIO = 3072, 24, 4.0
DOUBLE_BLOCKS, SINGLE_BLOCKS = 19, 38
FULL_TOKENS = (4096, 512)  # image tokens of 1024^2 (128^2 latent, 2x2 patches), text tokens (T5)
SMALL_TOKENS = (1024, 128)
FULL_PIXELS, SMALL_PIXELS = 1024, 256
REFERENCE_SETTING = {"steps": 50, "sync_steps": 10, "windows": 21}  # as the SD1.5 panorama rows


def block_flops(tokens: int, width: int = HIDDEN) -> float:
    """FLOPs of one Flux double or single block on ``tokens`` joint tokens: 24 T d^2 in the linear layers (both
    block kinds: qkv + proj + MLP of ratio 4) plus 4 T^2 d in the joint attention."""
    return 24.0 * tokens * width ** 2 + 4.0 * tokens ** 2 * width


def _positions(image_tokens: int, text_tokens: int):
    import torch
    side = int(math.isqrt(image_tokens))
    ids = torch.zeros(1, text_tokens + image_tokens, 3)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ids[0, text_tokens:, 1] = rows.flatten().float()
    ids[0, text_tokens:, 2] = cols.flatten().float()
    return ids


def full_width_blocks(device, image_tokens: int, text_tokens: int):
    """(double block, single block, RoPE table) of Flux.1 at full width with seeded random weights, frozen on
    ``device``, for ``image_tokens`` on a square grid after ``text_tokens``. Call under inference_mode(False)."""
    import comfy.ldm.flux.layers as flux
    import comfy.ops
    tiny = harness.test_nodes_module().tiny
    ops = comfy.ops.disable_weight_init
    double = flux.DoubleStreamBlock(HIDDEN, HEADS, MLP_RATIO, qkv_bias=True, operations=ops)
    single = flux.SingleStreamBlock(HIDDEN, HEADS, MLP_RATIO, operations=ops)
    for module in (double, single):
        tiny.seeded_init_(module, 0)
        module.to(device).eval().requires_grad_(False)
    pe = flux.EmbedND(128, 10000, [16, 56, 56])(_positions(image_tokens, text_tokens)).to(device)
    return double, single, pe


def run(host) -> None:
    import lpips
    import open_clip
    import torch

    import comfy.ldm.models.autoencoder
    import comfy.taesd.taesd
    from bench.common import device_and_sync, device_name, forward_only, interleaved, print_sync_cost_rows
    tiny = harness.test_nodes_module().tiny
    lpips_model = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.lpips_model")
    device, sync = device_and_sync()
    full = device.type == "cuda"
    image_tokens, text_tokens = FULL_TOKENS if full else SMALL_TOKENS
    pixels = FULL_PIXELS if full else SMALL_PIXELS
    token_scale = 1.0 if full else block_flops(sum(FULL_TOKENS)) / block_flops(sum(SMALL_TOKENS))
    pixel_scale = 1.0 if full else (FULL_PIXELS / SMALL_PIXELS) ** 2
    print(f"device: {device_name(device)}; " + ("every piece at full size" if full else
          f"blocks timed at {image_tokens}+{text_tokens} tokens x {token_scale:.2f} (FLOP ratio to 4096+512), "
          f"decoders and LPIPS at {pixels}^2 x {pixel_scale:.0f} (pixel ratio to 1024^2)"))
    pieces, no_backward = {}, {}
    with torch.inference_mode(False):
        double, single, pe = full_width_blocks(device, image_tokens, text_tokens)
        generator = torch.Generator().manual_seed(0)
        img = torch.randn(1, image_tokens, HIDDEN, generator=generator).to(device).requires_grad_(True)
        txt = torch.randn(1, text_tokens, HIDDEN, generator=generator).to(device).requires_grad_(True)
        joint = torch.randn(1, image_tokens + text_tokens, HIDDEN, generator=generator).to(device).requires_grad_(True)
        vec = torch.randn(1, HIDDEN, generator=generator).to(device)

        def double_forward():  # the blocks add to their inputs in place: hand them copies
            out_img, out_txt = double(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe)
            return out_img.sum() + out_txt.sum()

        def single_forward():
            return single(joint.clone(), vec=vec, pe=pe).sum()

        pieces["double"] = forward_only(double_forward)
        pieces["single"] = forward_only(single_forward)
        for name, forward in (("double g", double_forward), ("single g", single_forward)):
            try:  # ComfyUI's blocks add to tensors in place; autograd may refuse to go back through them
                forward().backward()
            except RuntimeError as error:
                no_backward[name] = "in-place update: " + str(error)[:60]
            else:
                pieces[name] = lambda forward=forward: forward().backward()

        config = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                  "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=config, embed_dim=16)
        taef1 = comfy.taesd.taesd.Decoder(latent_channels=16)
        for module in (vae, taef1):
            tiny.seeded_init_(module, 0)
            module.to(device).eval().requires_grad_(False)
        z = torch.randn(1, 16, pixels // 8, pixels // 8, generator=generator).to(device).requires_grad_(True)
        pooled = torch.randn(1, 16, pixels // 16, pixels // 16, generator=generator).to(device).requires_grad_(True)
        distance = lpips_model.LPIPSDistance(lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
                                             .requires_grad_(False).eval().to(device))
        image = torch.rand(1, 3, pixels, pixels, generator=generator).to(device).requires_grad_(True)
        anchor = torch.rand(1, 3, pixels, pixels, generator=generator).to(device)
        half = torch.rand(1, 3, pixels // 2, pixels // 2, generator=generator).to(device).requires_grad_(True)
        half_anchor = torch.rand(1, 3, pixels // 2, pixels // 2, generator=generator).to(device)
        clip = open_clip.create_model("ViT-B-32", pretrained=None).to(device).eval().requires_grad_(False)
        views = torch.rand(4, 3, 224, 224, generator=generator).to(device).requires_grad_(True)
        pieces["D"] = forward_only(lambda: vae.decode(z))
        pieces["Dg"] = lambda: vae.decode(z).sum().backward()
        pieces["pooled g"] = lambda: vae.decode(pooled).sum().backward()
        pieces["T"] = forward_only(lambda: taef1(z))
        pieces["Tg"] = lambda: taef1(z).sum().backward()
        pieces["L"] = forward_only(lambda: distance(image, anchor))
        pieces["Lg"] = lambda: distance(image, anchor).sum().backward()
        pieces["Lg/2"] = lambda: distance(half, half_anchor).sum().backward()
        pieces["CLIP g"] = lambda: clip.encode_image(views).sum().backward()
        with torch.enable_grad():
            measured = interleaved(pieces, sync, 1)  # one warm-up call each, then one timed
    scale = {name: token_scale if name.startswith(("double", "single")) else
             (1.0 if name == "CLIP g" else pixel_scale) for name in measured}
    costs = {name: seconds * scale[name] for name, seconds in measured.items()}
    costs["U"] = DOUBLE_BLOCKS * costs["double"] + SINGLE_BLOCKS * costs["single"]
    if no_backward:
        print("no backward through " + "; ".join(f"{k[:-2]} block ({v})" for k, v in no_backward.items()) +
              ": the rows that need the transformer's Jacobian are left out")
    else:
        costs["Ug"] = DOUBLE_BLOCKS * costs["double g"] + SINGLE_BLOCKS * costs["single g"]
    print("pieces at 1024x1024 (seconds" + ("" if full else ", measured x scale") + "): " +
          ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    print(f"  U = {DOUBLE_BLOCKS} double + {SINGLE_BLOCKS} single blocks (one model call: Flux.1 dev at cfg 1); "
          "g: forward + backward; D/T: 16-ch KL VAE / TAEF1-shaped decoder; L: LPIPS VGG; CLIP g: ViT-B-32 on 4 "
          "224 px views")
    steps, sync_steps, windows = (REFERENCE_SETTING[k] for k in ("steps", "sync_steps", "windows"))
    print(f"SyncDiffusion, {windows} windows of 1024 px, sync in {sync_steps} of {steps} steps, vs MultiDiffusion "
          f"(the SD1.5 rows' setting):")
    print_sync_cost_rows(costs, steps, sync_steps, windows, full_decoder_without_jacobian=True)
    print("CLIP guidance, guided / unguided sampling at the same steps:")
    for name, decoder_key, share in (("full VAE decoder, every step", "Dg", 1.0),
                                      ("full VAE decoder, every 2 steps", "Dg", 0.5),
                                      ("downscaled latent, every step", "pooled g", 1.0),
                                      ("taesd, every step", "Tg", 1.0),
                                      ("taesd, every 2 steps", "Tg", 0.5)):
        print(f"  {name:36} {1 + share * (costs[decoder_key] + costs['CLIP g']) / costs['U']:5.2f}x")
