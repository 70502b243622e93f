"""Tiny, seeded, random-weight flow transformers (Flux.1 dev / schnell, SD3.5, Chroma, Qwen-Image, Z-Image),
built through ComfyUI's own ``supported_models`` classes and ``model_base`` (their real ModelSampling: flow
shift, CONST; their real latent formats: 16 channels, 2x2 patchify, scale and shift), at toy widths.

The text side is the tiny SD1 CLIP of tiny.py (768 wide, pooled 768), so every tiny flow model takes a 768-wide
context (the real ones: T5-XXL 4096, Qwen2.5-VL 3584, Gemma/Qwen3 2560) and, where the family has one, a 768-wide
pooled vector (real Flux: CLIP-L 768, so that one matches).
"""
from __future__ import annotations


import torch

import comfy.ldm.models.autoencoder
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models as supported

from .tiny import seeded_init_, seeded_state_dict

TEXT_WIDTH = 768  # the tiny CLIP's hidden size and pooled size
_FLUX = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, hidden_size=64, num_heads=2,
             mlp_ratio=2.0, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, qkv_bias=True,
             context_in_dim=TEXT_WIDTH, vec_in_dim=TEXT_WIDTH)
FLOW_CONFIGS = {
    "flux_dev": (supported.Flux, {**_FLUX, "guidance_embed": True}),
    "flux_schnell": (supported.FluxSchnell, {**_FLUX, "guidance_embed": False}),
    "sd35": (supported.SD3, dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None,
                                 adm_in_channels=TEXT_WIDTH, pos_embed_max_size=64, num_patches=64 * 64,
                                 pos_embed_scaling_factor=None, qk_norm="rms",
                                 context_embedder_config={"target": "torch.nn.Linear",
                                                          "params": {"in_features": TEXT_WIDTH, "out_features": 128}})),
    "chroma": (supported.Chroma, dict(image_model="chroma", in_channels=64, out_channels=64, patch_size=2, hidden_size=64,
                                      num_heads=2, mlp_ratio=2.0, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
                                      theta=10000, qkv_bias=True, context_in_dim=TEXT_WIDTH, in_dim=64, out_dim=64,
                                      hidden_dim=64, n_layers=1)),
    "qwen_image": (supported.QwenImage, dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=1,
                                             attention_head_dim=32, num_attention_heads=2,
                                             joint_attention_dim=TEXT_WIDTH, axes_dims_rope=(8, 12, 12))),
    # Z-Image's modulation is 256 wide (min(dim, 256)), so its tiny width is 256
    "z_image": (supported.ZImage, dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=1,
                                       n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=TEXT_WIDTH,
                                       qk_norm=True, axes_dims=[32, 48, 48], axes_lens=[64, 64, 64], rope_theta=256.0,
                                       ffn_dim_multiplier=8 / 3, z_image_modulation=True, time_scale=1000.0,
                                       multiple_of=16)),
}
FLOW_KINDS = tuple(FLOW_CONFIGS)


def tiny_flow_model(kind: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """The family's own supported_models config and model_base class at toy width, seeded random."""
    if kind not in FLOW_CONFIGS:
        raise ValueError(f"kind must be one of {FLOW_KINDS}, got {kind!r}")
    model_class, unet_config = FLOW_CONFIGS[kind]
    config = model_class(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="cpu")
    seeded_init_(model.diffusion_model, seed)
    _fill_buffers_(model.diffusion_model)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _fill_buffers_(module: torch.nn.Module) -> None:
    """Give every buffer a defined value. SD3's MMDiT allocates ``pos_embed`` with ``torch.empty`` (a real
    checkpoint fills it with the fixed 2-D sin-cos table): left as it is, it held whatever the allocator reused,
    NaN in some processes (the tiny SD3.5's NaN latents), so it gets that sin-cos table here."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    for name, buffer in module.named_buffers():
        if name == "pos_embed":
            size = int(module.pos_embed_max_size)
            table = mmdit.get_2d_sincos_pos_embed(buffer.shape[-1], size)
            buffer.copy_(torch.from_numpy(table).reshape(buffer.shape).to(buffer.dtype))
        if not bool(torch.isfinite(buffer).all()):
            raise RuntimeError(f"tiny flow model: buffer {name} has no defined value")


def tiny_flow_vae(seed: int = 0) -> comfy.sd.VAE:
    """A 16-channel AutoencoderKL (the SD3/Flux VAE layout at toy width), seeded random."""
    config = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
              "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    params = {"ddconfig": config, "embed_dim": 16}
    shapes = comfy.ldm.models.autoencoder.AutoencoderKL(**params).state_dict()
    sd = seeded_state_dict(shapes, seed)
    vae = comfy.sd.VAE(sd=sd, config={"params": params})
    vae.latent_channels = 16  # what the loader detects for a real 16-channel VAE file
    return vae


def tiny_wan_vae(seed: int = 0) -> comfy.sd.VAE:
    """The Wan 2.1 VAE layout (Qwen-Image's VAE: 16 channels, 3-D latents [B, 16, T, H/8, W/8]) at toy width,
    seeded random; the loader detects it from the state dict as it does a real file."""
    import comfy.ldm.wan.vae
    shapes = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                      temperal_downsample=[False, True, True], dropout=0.0).state_dict()
    sd = seeded_state_dict(shapes, seed, ("weight", "gamma"))
    return comfy.sd.VAE(sd=sd)


def tiny_flow_vae_for(kind: str, seed: int = 0) -> comfy.sd.VAE:
    return tiny_wan_vae(seed) if kind == "qwen_image" else tiny_flow_vae(seed)
