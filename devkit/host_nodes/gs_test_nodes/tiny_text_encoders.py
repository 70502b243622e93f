"""Tiny, seeded, random-weight text encoders with each flow family's REAL structure, built through ComfyUI's own
classes: the family's ``supported_models`` ``clip_target`` (its tokenizer and its text-encoder model class:
FluxClipModel, SD3ClipModel, PixArt's T5 for Chroma, QwenImageTEModel, ZImageTEModel), the tokenizers ComfyUI
ships (CLIP BPE, T5 SentencePiece, Qwen2.5), and ComfyUI's supported per-encoder config overrides
(``model_options["<name>_model_config"]``) to shrink the widths and depths.

So ``CLIPTextEncode`` on one of these gives conditioning with the family's real token layout (T5 tokens for Flux,
CLIP-L/G chunk + T5 tokens for SD3.5, the Qwen chat template with its system prefix dropped for Qwen-Image), only
narrower. Widths (the tiny flow models are built to match when ``text_encoder="family"``):

- CLIP-L: hidden 32 (Flux's and SD3's pooled vector is its unprojected pooled output), CLIP-G: hidden 48,
  projection 48 (SD3 pools CLIP-G's projected output): SD3 pooled = 32 + 48 = 80.
- T5 for Flux.1 and Chroma: d_model 64. T5 for SD3.5: d_model 4096, because SD3ClipModel pads the CLIP-L|G
  features to a fixed 4096 before putting them in front of the T5 tokens (the real width), so only the T5
  embedding table is large; it is filled low-rank so it builds in a fraction of a second.
- Qwen2.5-VL LM (Qwen-Image): hidden 64 (its vision tower shrunk too: it only runs for image inputs).
  Qwen3 (Z-Image): hidden 64.
"""
from __future__ import annotations

import math

import torch

import comfy.sd
import comfy.sd1_clip
import comfy.supported_models as supported
import comfy.text_encoders.llama
import comfy.text_encoders.qwen_image
import comfy.text_encoders.qwen_vl

CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 32}
CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3,
          "projection_dim": 48}
T5_SMALL = {"d_model": 64, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2}
T5_SD3 = {"d_model": 4096, "d_ff": 32, "d_kv": 8, "num_heads": 2, "num_layers": 1}
QWEN25 = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
          "num_hidden_layers": 2}
QWEN3 = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
         "num_hidden_layers": 3}  # Z-Image reads the penultimate layer, so at least 3

# kind -> (context width, pooled width or None): what the tiny flow model of that family takes with these encoders
WIDTHS = {
    "flux_dev": (T5_SMALL["d_model"], CLIP_L["hidden_size"]),
    "flux_schnell": (T5_SMALL["d_model"], CLIP_L["hidden_size"]),
    "chroma": (T5_SMALL["d_model"], None),
    "sd35": (4096, CLIP_L["hidden_size"] + CLIP_G["projection_dim"]),
    "qwen_image": (QWEN25["hidden_size"], None),
    "z_image": (QWEN3["hidden_size"], None),
}


class _TinyQwen25VLI(comfy.text_encoders.llama.Qwen25_7BVLI):
    """Qwen25_7BVLI (the real class: its forward, its 3-D rope handling) with the vision tower at toy width; the
    real __init__ would build the 32-layer, 1280-wide tower (~0.6 G parameters) whatever the LM config says."""

    def __init__(self, config_dict, dtype, device, operations):
        torch.nn.Module.__init__(self)
        config = comfy.text_encoders.llama.Qwen25_7BVLI_Config(**config_dict)
        self.num_layers = config.num_hidden_layers
        self.model = comfy.text_encoders.llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
        self.visual = comfy.text_encoders.qwen_vl.Qwen2VLVisionTransformer(
            hidden_size=32, output_hidden_size=config.hidden_size, intermediate_size=32, num_heads=2, num_layers=1,
            device=device, dtype=dtype, ops=operations)
        self.dtype = dtype


class _TinyQwen25VLIModel(comfy.text_encoders.qwen_image.Qwen25_7BVLIModel):
    """Qwen25_7BVLIModel's own settings (pad 151643, last layer, no final-norm on hidden states, attention masks),
    with the tiny LM class above."""

    def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, attention_mask=True, model_options={}):
        comfy.sd1_clip.SDClipModel.__init__(
            self, device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config={}, dtype=dtype,
            special_tokens={"pad": 151643}, layer_norm_hidden_state=False, model_class=_TinyQwen25VLI,
            enable_attention_masks=attention_mask, return_attention_masks=attention_mask, model_options=model_options)


def _target_and_options(kind: str):
    prefix = "text_encoders."
    if kind in ("flux_dev", "flux_schnell"):
        target = supported.Flux({}).clip_target({})
        options = {"clip_l_model_config": CLIP_L, "t5xxl_model_config": T5_SMALL}
    elif kind == "chroma":
        target = supported.Chroma({}).clip_target({})
        options = {"t5xxl_model_config": T5_SMALL}
    elif kind == "sd35":
        # the loader's detection reads which encoders a checkpoint holds; name all three, as an SD3.5 file does
        marker = torch.zeros(1)
        present = {f"{prefix}clip_l.transformer.text_model.final_layer_norm.weight": marker,
                   f"{prefix}clip_g.transformer.text_model.final_layer_norm.weight": marker,
                   f"{prefix}t5xxl.transformer.encoder.final_layer_norm.weight": marker}
        target = supported.SD3({}).clip_target(present)
        options = {"clip_l_model_config": CLIP_L, "clip_g_model_config": CLIP_G, "t5xxl_model_config": T5_SD3}
    elif kind == "qwen_image":
        target = supported.QwenImage({}).clip_target({})
        options = {"qwen25_7b_model_config": QWEN25, "qwen25_7b_class": _TinyQwen25VLIModel}
    elif kind == "z_image":
        target = supported.ZImage({}).clip_target({})
        options = {"qwen3_4b_model_config": QWEN3}
    else:
        raise ValueError(f"kind must be one of {tuple(WIDTHS)}, got {kind!r}")
    return target, options


@torch.no_grad()
def seeded_text_init_(module: torch.nn.Module, seed: int, rank: int = 16) -> None:
    """Seeded init: token and position tables N(0, 0.02^2) (filled as a rank-``rank`` product, so SD3.5's
    32128 x 4096 T5 table costs one small matmul), other matrices fan-in scaled, norm scales 1, biases small."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.numel() == 0:
            continue
        table = p.ndim == 2 and (name.endswith("embed_tokens.weight") or name.endswith("shared.weight")
                                 or name.endswith("_embedding.weight"))
        if table:
            u = torch.randn(p.shape[0], rank, generator=gen)
            v = torch.randn(rank, p.shape[1], generator=gen) * (0.02 / math.sqrt(rank))
            if p.dtype == torch.float32 and p.is_contiguous():
                torch.mm(u, v, out=p)  # straight into the table: no 0.5 GB temporary for SD3.5's T5
                continue
            values = u @ v
        elif p.ndim >= 2:
            values = torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel())
        elif name.endswith("weight"):
            values = torch.ones(p.shape)
        else:
            values = torch.randn(p.shape, generator=gen) * 0.02
        p.copy_(values.to(p.dtype))


def tiny_family_clip(kind: str, seed: int = 0) -> comfy.sd.CLIP:
    """A comfy.sd.CLIP with family ``kind``'s real tokenizer(s) and text-encoder class, tiny and seeded."""
    target, options = _target_and_options(kind)
    clip = comfy.sd.CLIP(target=target, model_options={"initial_device": "cpu", "dtype": torch.float32, **options})
    seeded_text_init_(clip.cond_stage_model, seed)
    return clip
