"""Stroke Regions to Words: name each colour region of a stroke painting with words.

The node finds the painting's colour regions, the tokens of each region's phrase in the prompt,
and installs attn2 replace patches on a ``model.clone()`` that bias the positive rows of every
cross-attention layer towards those tokens inside their region (``guidance/regions.py``).
An attn2 replace patch that was already on the model keeps being called: ours wraps it and adds
the difference between biased and plain attention to its output.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

import comfy.ldm.modules.attention as comfy_attention

from ..guidance import palette as palettes, regions
from .toolkit import host, log

CATEGORY = "guided_synthesis/regions"
LOG = log.logger("regions")

# The node's options are declared once: each is one schema input (:func:`method_inputs`, defaults and choices as
# the named constants below) and the RegionsConfig field of the same name; the node builds its config from its
# inputs by name (:func:`config_from_inputs`). Adding an option: its input, its field, its test.
DEFAULT_STRENGTH = 0.4
DEFAULT_MODE = "paint_with_words"
DEFAULT_START_PERCENT = 0.0
DEFAULT_END_PERCENT = 1.0
DEFAULT_MISSING_PHRASES = "append"
DEFAULT_COLOUR_TOLERANCE = 24
DEFAULT_MIN_REGION_PERCENT = 0.2


@dataclass
class RegionsConfig:
    """Stroke Regions to Words' options (built from the node's inputs: :func:`config_from_inputs`)."""

    prompt: str
    region_spec: str
    strength: float
    mode: str
    start_percent: float
    end_percent: float
    missing_phrases: str
    colour_tolerance: int
    min_region_percent: float

    def validate(self) -> None:
        if self.mode not in regions.MODES:
            raise ValueError(f"mode must be one of {regions.MODES}, got {self.mode!r}")
        if self.start_percent > self.end_percent:
            raise ValueError(f"start_percent ({self.start_percent}) must not be larger than end_percent "
                             f"({self.end_percent})")


# ----------------------------------------------------------------------------------------------
# Tokens


def _ids(chunks) -> list[list[int | None]]:
    """Token ids of a tokenised prompt's chunks ((token, weight[, word id]) tuples); embeddings -> None."""
    return [[t[0] if isinstance(t[0], int) else None for t in chunk] for chunk in chunks]


def _special_tokens(clip, key: str) -> tuple[int | None, int | None]:
    empty = _ids(clip.tokenize("")[key])[0]
    if len(empty) < 2:
        raise ValueError("clip: its tokenizer has no start/end tokens; Stroke Regions to Words needs a CLIP text "
                         "encoder (SD1.x, SD2, SDXL)")
    return empty[0], empty[1]


def token_spans(clip, prompt: str, phrases: list[str], missing: str) -> tuple[dict, str, list[list[int]], int]:
    """Tokenise ``prompt`` and find every phrase's token positions (the same positions for every text
    encoder of the model, e.g. SDXL's clip_l and clip_g). Missing phrases are appended to the prompt
    (``missing='append'``) or reported (``'error'``).

    Returns (tokens, final prompt, positions per phrase, prompt length in tokens).
    """
    if missing not in regions.MISSING_PHRASES:
        raise ValueError(f"missing_phrases must be one of {regions.MISSING_PHRASES}, got {missing!r}")
    keys = sorted(clip.tokenize(prompt).keys(), key=lambda k: (k != "l", k))
    specials = {key: _special_tokens(clip, key) for key in keys}
    phrase_ids = {}
    for phrase in set(phrases):
        ids = {key: [i for _, i in regions.content_positions(_ids(chunks), *specials[key])]
               for key, chunks in clip.tokenize(phrase).items()}
        if not any(ids.values()):
            raise ValueError(f"region_spec: the phrase {phrase!r} has no tokens")
        phrase_ids[phrase] = ids

    def locate(text: str):
        tokens = clip.tokenize(text)
        found = {}
        for key in keys:
            found[key] = regions.phrase_token_positions(_ids(tokens[key]), [phrase_ids[p][key] for p in phrases],
                                                        *specials[key])
        return tokens, found

    tokens, found = locate(prompt)
    absent = [p for p, positions in zip(phrases, found[keys[0]]) if not positions]
    if absent:
        if missing == "error":
            raise ValueError(f"prompt: the phrase(s) {', '.join(repr(p) for p in absent)} of region_spec are not in "
                             f"the prompt; add them or set missing_phrases to 'append'")
        prompt = ", ".join([prompt.rstrip().rstrip(",")] + list(dict.fromkeys(absent))) if prompt.strip() \
            else ", ".join(dict.fromkeys(absent))
        tokens, found = locate(prompt)
        still = [p for p, positions in zip(phrases, found[keys[0]]) if not positions]
        if still:
            raise ValueError(f"region_spec: the phrase(s) {still} could not be placed in the prompt")
    for key in keys[1:]:
        if found[key] != found[keys[0]]:
            raise ValueError(f"clip: the text encoders '{keys[0]}' and '{key}' tokenise the prompt differently; "
                             f"region-token attention cannot line up the phrases")
    length = sum(len(chunk) for chunk in tokens[keys[0]])
    return tokens, prompt, found[keys[0]], length


# ----------------------------------------------------------------------------------------------
# The attn2 replace patch


def cross_attention_sites(model) -> list[tuple[str, int, int]]:
    """(block name, block number, transformer index) of every text cross-attention in a UNet."""
    unet = model.get_model_object("diffusion_model")
    groups = [("input", getattr(unet, "input_blocks", None)), ("middle", [getattr(unet, "middle_block", None)]),
              ("output", getattr(unet, "output_blocks", None))]
    sites = []
    for name, blocks in groups:
        for number, block in enumerate(blocks or []):
            if block is None:
                continue
            for layer in block:
                for index, transformer in enumerate(getattr(layer, "transformer_blocks", [])):
                    if getattr(transformer, "attn2", None) is not None:
                        sites.append((name, number, index))
    return sites


def _plain_attention(q, k, v, extra_options):
    return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                               attn_precision=extra_options.get("attn_precision"),
                                               transformer_options=extra_options)


class RegionAttentionPatch:
    """attn2 replace callable: region-biased attention on the positive rows inside the sigma window; the
    other rows keep the unpatched layer's own attention call. With an earlier replace patch, that patch
    runs on every row and the bias is added to its output as (biased - plain)."""

    def __init__(self, region: regions.RegionAttention, previous=None):
        self.region = region
        self.previous = previous
        self._warned = False

    def __deepcopy__(self, memo):
        return RegionAttentionPatch(self.region, copy.deepcopy(self.previous, memo))

    def _warn(self, message: str) -> None:
        if not self._warned:
            LOG.warning("Stroke Regions to Words: %s; this layer is left unbiased", message)
            self._warned = True

    def __call__(self, q, k, v, extra_options):
        rows, sigma, grid = self._biased_rows(q, k, extra_options)
        if rows is None:
            return self._unbiased(q, k, v, extra_options)
        rows_dev = rows.to(q.device)
        result = self.region.attention(q[rows_dev], k[rows_dev], v[rows_dev], extra_options["n_heads"], grid,
                                       sigma, with_plain=self.previous is not None)
        if result is None:
            self._warn(f"the conditioning has {k.shape[1]} tokens, not a multiple of the prompt's "
                       f"{self.region.n_tokens} (connect this node's CONDITIONING output)")
            return self._unbiased(q, k, v, extra_options)
        if self.previous is not None:
            biased, plain = result
            out = self.previous(q, k, v, extra_options).clone()  # the other patch's tensor is not ours to edit
            out[rows_dev] = out[rows_dev] + (biased - plain)
            return out
        # The unbiased rows come from the very call the unpatched layer makes (same function, same full
        # batch), so they are what the unpatched model computes on any attention backend; computing them on
        # a sub-batch instead would let batch-size-dependent kernels round them differently.
        out = _plain_attention(q, k, v, extra_options)
        out[rows_dev] = result.to(out.dtype)
        return out

    def _unbiased(self, q, k, v, extra_options):
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return _plain_attention(q, k, v, extra_options)

    def _biased_rows(self, q, k, extra_options):
        """(positive rows inside the sigma window, their sigmas, the layer's grid), or Nones."""
        kinds = list(extra_options.get("cond_or_uncond") or [])
        sigmas = extra_options.get("sigmas")
        if self.region.is_noop or not kinds or sigmas is None or q.shape[0] % len(kinds):
            return None, None, None
        chunk = q.shape[0] // len(kinds)
        rows = torch.tensor([c * chunk + i for c, kind in enumerate(kinds) if kind == 0 for i in range(chunk)],
                            dtype=torch.long)
        sigmas = sigmas.reshape(-1)
        sigma = sigmas[rows.to(sigmas.device)] if sigmas.numel() == q.shape[0] else sigmas[:1].expand(len(rows))
        if len(rows):
            keep = self.region.active(sigma.float().cpu())
            rows, sigma = rows[keep], sigma[keep.to(sigma.device)]
        if not len(rows):
            return None, None, None
        latent_hw = (extra_options.get("original_shape") or [0, 0, 0, 0])[-2:]
        grid = regions.layer_grid(q.shape[1], latent_hw, (extra_options.get("activations_shape") or [])[-2:] or None)
        if grid is None:
            self._warn(f"cannot tell the layout of a layer with {q.shape[1]} query tokens")
            return None, None, None
        return rows, sigma, grid


def patch_model(model, region: regions.RegionAttention):
    """A clone of ``model`` with region attention on every cross-attention site (wrapping any
    attn2 replace patch already there)."""
    sites = cross_attention_sites(model)
    if not sites:
        raise ValueError("model: no text cross-attention layers found; Stroke Regions to Words works with UNet "
                         "models (SD1.x, SD2, SDXL)")
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for name, number, index in sites:
        previous = existing.get((name, number, index), existing.get((name, number)))
        patched.set_model_attn2_replace(RegionAttentionPatch(region, previous), name, number, index)
    return patched


# ----------------------------------------------------------------------------------------------
# Preview


def _label_anchor(mask: torch.Tensor) -> tuple[int, int]:
    """(x, y) of the region pixel deepest inside it (repeated 3x3 erosion on a <=128 px copy)."""
    h, w = mask.shape
    scale = max(1, max(h, w) // 128)
    small = (F.avg_pool2d(mask[None, None], scale, ceil_mode=True)[0, 0] > 0.5).float() if scale > 1 else mask
    if not small.any():
        ys, xs = torch.nonzero(mask, as_tuple=True)
        return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
    depth = torch.zeros_like(small)
    current = small
    for _ in range(64):
        depth += current
        current = palettes.erode(current[None])[0] * current
        if not current.any():
            break
    index = int(torch.argmax(depth))
    y, x = divmod(index, small.shape[1])
    return min(w - 1, x * scale + scale // 2), min(h - 1, y * scale + scale // 2)


def preview_image(palette: palettes.Palette, phrases: list[str | None]) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: each region in its colour, region borders dark, '1 phrase' labels."""
    from PIL import Image, ImageDraw, ImageFont

    masks = palette.masks
    colours = torch.tensor(palette.colours, dtype=torch.float32) / 255.0
    image = torch.einsum("rhw,rc->hwc", masks, colours)
    border = (masks - palettes.erode(masks)).amax(0) > 0
    image[border] = image[border] * 0.35
    pil = Image.fromarray((image.clamp(0, 1) * 255).round().byte().numpy())
    draw = ImageDraw.Draw(pil)
    size = max(10, min(pil.size) // 24)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for index, phrase in enumerate(phrases):
        x, y = _label_anchor(masks[index])
        text = f"{index + 1} {phrase}" if phrase else f"{index + 1} (no phrase)"
        box = draw.textbbox((x, y), text, font=font, anchor="mm")
        # keep the label inside the image (regions at the border, small paintings)
        x += max(0, 2 - box[0]) - max(0, box[2] - (pil.width - 3))
        y += max(0, 2 - box[1]) - max(0, box[3] - (pil.height - 3))
        box = draw.textbbox((x, y), text, font=font, anchor="mm")
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((x, y), text, font=font, fill=(255, 255, 255), anchor="mm")
    return torch.from_numpy(np.asarray(pil).copy()).float().div(255).unsqueeze(0)


# ----------------------------------------------------------------------------------------------
# The node


def _sigma_to_t(model):
    _, sigma_to_time = host.time_sigma_maps(model)
    return functools.lru_cache(maxsize=256)(lambda sigma: float(sigma_to_time(sigma)))


def method_inputs() -> list:
    """The node's options, after model, clip and stroke (their order is the node's widget order: keep it)."""
    return [
        io.String.Input("prompt", multiline=True, default="",
                        tooltip="The whole-image prompt. Region phrases are found in it (weights such as "
                                "(castle:1.2) are fine); missing ones are appended or reported."),
        io.String.Input("region_spec", multiline=True, default="",
                        tooltip="One region per line: '#RRGGBB: phrase', 'colour: phrase' (red, light blue, "
                                "dark green, ...) or a bare 'phrase' (given to the unnamed colours in "
                                "palette order, see the preview). Empty: no bias, the palette is shown."),
        io.Float.Input("strength", default=DEFAULT_STRENGTH, min=0.0, max=10.0, step=0.05,
                       tooltip="How strongly each phrase is tied to its region. paint_with_words: "
                               "w = strength * log(1 + sigma) * max(QK^T) (eDiff-I uses 0.4; try 0.2-1). "
                               "dense: strength * t^5 while t >= 0.7 (DenseDiffusion uses 1.0). 0 leaves the model unchanged."),
        io.Combo.Input("mode", options=list(regions.MODES), default=DEFAULT_MODE,
                       tooltip="paint_with_words: add a bias on the phrase tokens inside the region "
                               "(eDiff-I). dense: DenseDiffusion's modulation: inside a named region pull its phrase "
                               "towards the row maximum and push every other token towards the minimum, "
                               "more for small regions, in the first 30% of the noise (t >= 0.7)."),
        io.Float.Input("start_percent", default=DEFAULT_START_PERCENT, min=0.0, max=1.0, step=0.01,
                       tooltip="Start of the sampling range (0 = first, noisiest step) where the bias acts."),
        io.Float.Input("end_percent", default=DEFAULT_END_PERCENT, min=0.0, max=1.0, step=0.01,
                       tooltip="End of the sampling range (1 = last step) where the bias acts."),
        io.Combo.Input("missing_phrases", options=list(regions.MISSING_PHRASES),
                       default=DEFAULT_MISSING_PHRASES,
                       tooltip="A region phrase that is not in the prompt: append it to the prompt "
                               "(', phrase') or stop with an error."),
        io.Int.Input("colour_tolerance", default=DEFAULT_COLOUR_TOLERANCE, min=1, max=200, optional=True,
                     tooltip="Colours closer than this (RGB distance, 0-255 units) are one region; "
                             "raise it for noisy or JPEG paintings."),
        io.Float.Input("min_region_percent", default=DEFAULT_MIN_REGION_PERCENT, min=0.0, max=50.0, step=0.05,
                       optional=True,
                       tooltip="Regions smaller than this percentage of the image (specks, anti-aliased "
                               "edges) are merged into their nearest colour."),
    ]


def config_from_inputs(inputs: dict) -> RegionsConfig:
    """The config from the node's inputs by name (an optional one left out: the schema's default)."""
    return RegionsConfig(**{spec.id: inputs.get(spec.id, spec.default) for spec in method_inputs()})


class StrokeRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_StrokeRegions",
            display_name="Stroke Regions to Words",
            category=CATEGORY,
            description="Say what each colour region of a stroke painting is ('river', 'castle', 'sun'), without "
                        "training: the words' prompt tokens get more cross-attention inside their region "
                        "(eDiff-I paint-with-words, or DenseDiffusion-style modulation). Outputs a patched MODEL "
                        "and the prompt's CONDITIONING for any sampler (KSampler, SamplerCustom, SDEdit, GradOP+).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (UNet: SD1.x, SD2, SDXL). It is cloned, never "
                                                "changed; attention patches already on it keep working."),
                io.Clip.Input("clip", tooltip="The model's text encoder; it tokenises and encodes the prompt."),
                io.Image.Input("stroke", tooltip="The stroke painting whose colour regions are named (one image). "
                                                 "It is stretched to the generated image's size."),
                *method_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with region-token cross-attention."),
                io.Conditioning.Output(display_name="CONDITIONING",
                                       tooltip="The prompt encoded with the tokenisation the regions refer to; use "
                                               "it as the positive conditioning."),
                io.Image.Output(display_name="preview", tooltip="The detected regions, numbered, with their phrases."),
            ],
        )

    @classmethod
    @host.validated
    def execute(cls, model, clip, stroke, **options) -> io.NodeOutput:
        """``options``: the inputs of :func:`method_inputs` (:func:`config_from_inputs`)."""
        if clip is None:
            raise ValueError("clip: connect the model's CLIP (the checkpoint has no text encoder)")
        config = config_from_inputs(options)
        config.validate()
        prompt, region_spec, strength, mode = config.prompt, config.region_spec, config.strength, config.mode
        colour_tolerance, min_region_percent = config.colour_tolerance, config.min_region_percent
        pixels = host.image_to_rgb(stroke, "stroke")
        if pixels.shape[0] != 1:
            raise ValueError(f"stroke: expected one painting, got a batch of {pixels.shape[0]}")
        palette = palettes.extract_palette(pixels[0], float(colour_tolerance), float(min_region_percent) / 100.0)
        spec = regions.parse_region_spec(region_spec)
        phrases = regions.resolve_regions(spec, palette.colours, float(colour_tolerance))
        named = [i for i, p in enumerate(phrases) if p]

        tokens, final_prompt, positions, length = token_spans(clip, prompt, [phrases[i] for i in named],
                                                              config.missing_phrases)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        if conditioning and conditioning[0][0].shape[1] != length:
            raise ValueError(f"clip: the encoded prompt has {conditioning[0][0].shape[1]} tokens, not the "
                             f"{length} it was tokenised to; this text encoder is not supported")

        token_masks = torch.zeros(len(named), length)
        for row, spans in enumerate(positions):
            token_masks[row, spans] = 1.0
        region = regions.RegionAttention(
            masks=palette.masks[named] if named else palette.masks[:0], token_masks=token_masks,
            strength=float(strength), mode=mode, sigma_start=host.percent_to_sigma(model, config.start_percent),
            sigma_end=host.percent_to_sigma(model, config.end_percent), sigma_to_t=_sigma_to_t(model) if mode == "dense" else None)
        if region.is_noop:
            if not named:
                LOG.info("Stroke Regions to Words: region_spec names no region; the model is unchanged")
            patched = model.clone()
        else:
            patched = patch_model(model, region)

        preview = preview_image(palette, phrases)
        palette_ui = {
            "colours": [palette.hex(i) for i in range(len(palette.colours))],
            "names": [regions.colour_family(c) for c in palette.colours],
            "areas": [round(a, 4) for a in palette.areas],
            "phrases": [p or "" for p in phrases],
            "tokens": [len(positions[named.index(i)]) if i in named else 0 for i in range(len(phrases))],
            "spec": region_spec,
            "prompt": final_prompt,
            "tolerance": int(colour_tolerance),
        }
        ui_data = {"gs_palette": [palette_ui]}
        try:
            ui_data.update(ui.PreviewImage(preview, cls=cls).as_dict())
        except Exception as error:  # the preview on the node is a convenience; never fail the run for it
            LOG.debug("no node preview: %s", error)
        return io.NodeOutput(patched, conditioning, preview, ui=ui_data)


