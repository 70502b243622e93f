"""Tiny, seeded, random-weight stand-ins for real checkpoints, built in-process.

They are real ComfyUI objects (ModelPatcher, comfy.sd.VAE, comfy.sd.CLIP) with the
architectures of SD1.x / SD2 (v-prediction) / SDXL at toy widths, so whole workflows
run through the real executor with no downloads. ``full_size=True`` builds the real
SD1.5 widths (random weights cost the same as trained ones; used by ``make bench``).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.taesd.taesd

KINDS = ("sd15", "sd2_v", "sdxl", "sd15_inpaint")

_COMMON = {
    "use_checkpoint": False, "legacy": False, "use_temporal_attention": False,
    "use_temporal_resblock": False, "in_channels": 4, "out_channels": 4, "image_size": 32,
    "use_spatial_transformer": True, "num_head_channels": -1, "dtype": torch.float32,
}


def _unet_config(kind: str, full_size: bool) -> dict:
    if full_size:
        if kind != "sd15":
            raise ValueError("full_size is only provided for sd15")
        return {**_COMMON, "model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
                "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
                "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], "context_dim": 768,
                "num_heads": 8, "use_linear_in_transformer": False, "adm_in_channels": None}
    tiny = {**_COMMON, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1],
            "transformer_depth": [1, 1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
            "num_heads": 8}
    if kind in ("sd15", "sd15_inpaint"):
        channels = 9 if kind == "sd15_inpaint" else 4  # inpainting UNets take the mask and masked latent too
        return {**tiny, "context_dim": 768, "use_linear_in_transformer": False, "adm_in_channels": None,
                "in_channels": channels}
    # SD2 and SDXL configs force 64-channel heads (unet_extra_config), so they need 64 channels.
    if kind == "sd2_v":
        return {**tiny, "model_channels": 64, "context_dim": 1024, "use_linear_in_transformer": True,
                "adm_in_channels": None}
    if kind == "sdxl":
        return {**tiny, "model_channels": 64, "context_dim": 2048, "use_linear_in_transformer": True,
                "adm_in_channels": 2816, "num_classes": "sequential"}
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def context_dim(kind: str) -> int:
    return {"sd15": 768, "sd2_v": 1024, "sdxl": 2048, "sd15_inpaint": 768}[kind]


@torch.no_grad()
def seeded_init_(module: torch.nn.Module, seed: int) -> None:
    """Deterministic fan-in init (comfy.ops layers skip torch's own init)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.numel() == 0:
            continue
        if p.ndim >= 2:
            fan_in = p[0].numel()
            values = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
        elif name.endswith("weight"):
            values = torch.ones(p.shape)
        else:
            values = torch.randn(p.shape, generator=gen) * 0.02
        p.copy_(values.to(p.dtype))


def tiny_model(kind: str = "sd15", seed: int = 0, full_size: bool = False) -> comfy.model_patcher.ModelPatcher:
    unet_config = _unet_config(kind, full_size)
    if kind in ("sd15", "sd15_inpaint"):
        config = comfy.supported_models.SD15(unet_config)
    elif kind == "sd2_v":
        config = comfy.supported_models.SD20(unet_config)
    else:
        config = comfy.supported_models.SDXL(unet_config)
    config.set_inference_dtype(torch.float32, None)
    if kind == "sd2_v":
        model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION, device="cpu")
    else:
        model = config.get_model({}, device="cpu")
    seeded_init_(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def tiny_vae(seed: int = 0, latent_scale: float = 0.18215) -> comfy.sd.VAE:
    """A TAESD-shaped comfy.sd.VAE with seeded random weights (encode, decode, downscale 8)."""
    gen = torch.Generator().manual_seed(seed)
    reference = comfy.taesd.taesd.TAESD(latent_channels=4).state_dict()
    sd = {}
    for key, value in reference.items():
        if not value.is_floating_point() or key in ("vae_scale", "vae_shift"):
            continue
        if value.ndim >= 2 and value.numel() > 0:
            sd[key] = torch.randn(value.shape, generator=gen) / math.sqrt(value[0].numel())
        else:
            sd[key] = torch.randn(value.shape, generator=gen) * 0.02
    sd["vae_scale"] = torch.tensor(latent_scale)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


TINY_KL_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
                  "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def seeded_state_dict(shapes: dict, seed: int, unit_suffixes: tuple[str, ...] = ("weight",)) -> dict:
    """Seeded random values for a module's state dict ``shapes``: fan-in scaled matrices and kernels, ones for
    the 1-D tensors whose name ends with ``unit_suffixes`` (norm scales), small biases."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in shapes.items():
        if value.ndim >= 2:
            sd[key] = torch.randn(value.shape, generator=gen) / math.sqrt(value[0].numel())
        elif key.endswith(unit_suffixes):
            sd[key] = torch.ones(value.shape)
        else:
            sd[key] = torch.randn(value.shape, generator=gen) * 0.02
    return sd


def tiny_kl_vae(seed: int = 0, full_size: bool = False) -> comfy.sd.VAE:
    """An AutoencoderKL-shaped comfy.sd.VAE (the SD1/SDXL VAE architecture at toy width), seeded random.

    ``full_size=True`` gives the real SD VAE widths (ch 128, mult 1-2-4-4, 2 res blocks), for ``make bench``.
    """
    config = dict(TINY_KL_CONFIG)
    if full_size:
        config.update(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    params = {"ddconfig": config, "embed_dim": 4}
    import comfy.ldm.models.autoencoder
    shapes = comfy.ldm.models.autoencoder.AutoencoderKL(**params).state_dict()
    sd = seeded_state_dict(shapes, seed)
    return comfy.sd.VAE(sd=sd, config={"params": params})


def taesd_decoder_state_dict(seed: int = 0, latent_channels: int = 4) -> dict:
    """A seeded random state dict in the layout of models/vae_approx/taesd_decoder.safetensors (16 latent
    channels: taesd3_decoder / taef1_decoder, the SD3 and Flux decoders)."""
    reference = comfy.taesd.taesd.TAESD(latent_channels=latent_channels).taesd_decoder.state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {key: (torch.randn(v.shape, generator=gen) / math.sqrt(v[0].numel()) if v.ndim >= 2
                  else torch.randn(v.shape, generator=gen) * 0.02).contiguous() for key, v in reference.items()}


_TINY_TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
    "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
    "vocab_size": 49408,
}


class _TinyTextModel(comfy.sd1_clip.SDClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, model_options=model_options,
                         textmodel_json_config=dict(_TINY_TEXT_CONFIG), return_projected_pooled=False)


def tiny_clip(seed: int = 0) -> comfy.sd.CLIP:
    """SD1 tokenizer (bundled, offline) + a 2-layer, 768-wide CLIP text encoder with random weights."""
    target = SimpleNamespace(params={"clip_model": _TinyTextModel},
                             clip=comfy.sd1_clip.SD1ClipModel, tokenizer=comfy.sd1_clip.SD1Tokenizer)
    clip = comfy.sd.CLIP(target=target, model_options={"initial_device": "cpu"})
    with torch.no_grad():
        seeded_init_(clip.cond_stage_model, seed)
        # Keep the token embedding small so the random encoder stays well-conditioned.
        for name, p in clip.cond_stage_model.named_parameters():
            if "embedding" in name:
                p.mul_(0.02 * math.sqrt(p.shape[-1]))
    return clip


def random_conditioning(kind: str = "sd15", seed: int = 0, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, 77, context_dim(kind), generator=gen)
    extra = {}
    if kind == "sdxl":
        extra["pooled_output"] = torch.randn(batch, 1280, generator=gen)
    return [[cond, extra]]
