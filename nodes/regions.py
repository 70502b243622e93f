"""Stroke Regions to Words: name each colour region of a stroke painting with words.

The node finds the painting's colour regions, the tokens of each region's phrase in the prompt,
and installs attn2 replace patches on a ``model.clone()`` that bias the positive rows of every
cross-attention layer towards those tokens inside their region (``guidance/regions.py``).
An attn2 replace patch that was already on the model keeps being called: ours wraps it and adds
the difference between biased and plain attention to its output. On joint-attention transformers
(Flux.1, SD3.5, Qwen-Image) the bias is an additive mask on the image-query x text-key block, passed
through the host's attention override hook (docs/methods/regions.md section 6a).
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


def _key_tokenizer(clip, key: str):
    """The tokenizer behind one key of ``clip.tokenize`` ('l' -> clip_l, 't5xxl', 'qwen25_7b', ...), or None."""
    for value in getattr(getattr(clip, "tokenizer", None), "__dict__", {}).values():
        if getattr(value, "embedding_key", None) in (key, f"clip_{key}"):
            return value
    return None


def _special_tokens(clip, key: str) -> tuple[int | None, int | None]:
    tokenizer = _key_tokenizer(clip, key)
    if tokenizer is not None and hasattr(tokenizer, "start_token") and hasattr(tokenizer, "end_token"):
        return tokenizer.start_token, tokenizer.end_token
    empty = _ids(clip.tokenize("")[key])[0]
    if len(empty) < 2:
        raise ValueError("clip: its tokenizer has no start/end tokens; Stroke Regions to Words cannot find the "
                         "prompt's words in it")
    return empty[0], empty[1]


QWEN_IM_START, QWEN_IM_END, QWEN_USER, QWEN_NEWLINE = 151644, 151645, 872, 198


def _qwen_user_text(ids: list[int | None]) -> tuple[int, int]:
    """(first, end) token index of the user's text in a Qwen-Image chat-template prompt. ``first`` is where
    ComfyUI's Qwen-Image encoder cuts the template off (after the second '<|im_start|>' and 'user\\n'), so
    the token at index i sits at context position i - first."""
    starts = [i for i, t in enumerate(ids) if t == QWEN_IM_START][:2]
    if not starts:
        return 0, len(ids)
    first = starts[-1]
    if len(ids) > first + 3 and ids[first + 1] == QWEN_USER and ids[first + 2] == QWEN_NEWLINE:
        first += 3
    end = next((i for i in range(first, len(ids)) if ids[i] == QWEN_IM_END), len(ids))
    return first, end


@dataclass(frozen=True)
class Segment:
    """Tokenizer keys whose encodings fill one stretch of the model's context, all at the same positions."""
    keys: tuple[str, ...]
    chat_template: bool = False  # Qwen-Image: the encoder drops the template's system part

    def content(self, clip, key: str, tokens) -> list[tuple[int, int | None]]:
        """(position in this segment, id) of every content token of ``tokens[key]`` (no start/end/padding,
        no chat template)."""
        ids = _ids(tokens[key])
        if self.chat_template:
            flat = [t for chunk in ids for t in chunk]
            first, end = _qwen_user_text(flat)
            return [(i - first, flat[i]) for i in range(first, end)]
        return regions.content_positions(ids, *_special_tokens(clip, key))

    def length(self, tokens) -> int:
        flat = [t for chunk in _ids(tokens[self.keys[0]]) for t in chunk]
        return len(flat) - (_qwen_user_text(flat)[0] if self.chat_template else 0)


def context_layout(keys) -> list[Segment] | None:
    """Where a text encoder with these tokenizer keys puts the prompt in the model's context, as segments
    laid one after another: CLIP-only encoders (SD1 'l', SD2 'h', SDXL 'l' + 'g') put every key at the same
    positions; SD3 lays its CLIP-L/G chunks before its T5 tokens; Flux.1 and Chroma condition on T5 alone
    (CLIP-L only gives the pooled vector); Qwen-Image on its chat-template tokens after the system part.
    None for an encoder the node does not know."""
    keys = set(keys)
    clip_keys = tuple(sorted(keys & {"l", "g", "h"}, key=lambda k: (k != "l", k)))
    if keys == {"qwen25_7b"}:
        return [Segment(("qwen25_7b",), chat_template=True)]
    if "t5xxl" in keys and keys <= {"l", "g", "t5xxl"}:
        return [Segment(clip_keys), Segment(("t5xxl",))] if "g" in keys else [Segment(("t5xxl",))]
    if clip_keys and keys == set(clip_keys):
        return [Segment(clip_keys)]
    return None


def _spans(content: list[tuple[int, int | None]], patterns: list[list[list[int]]]) -> list[list[int]]:
    """Positions of each phrase (given as its token patterns) among ``content``'s tokens."""
    flat, owner = [], []
    for row, variants in enumerate(patterns):
        for variant in variants:
            flat.append(variant)
            owner.append(row)
    found = [set() for _ in patterns]
    for row, span in zip(owner, regions.phrase_token_positions([[t for _, t in content]], flat, None, None)):
        found[row].update(content[k][0] for k in span)
    return [sorted(row) for row in found]


def token_spans(clip, prompt: str, phrases: list[str], missing: str) -> tuple[dict, str, list[list[int]], int]:
    """Tokenise ``prompt`` and find every phrase's positions in the context the text encoder makes of it
    (the same positions for every encoder of one segment, e.g. SDXL's clip_l and clip_g; every segment
    that holds the prompt, e.g. both SD3's CLIP and T5 parts). Missing phrases are appended to the prompt
    (``missing='append'``) or reported (``'error'``).

    Returns (tokens, final prompt, positions per phrase, context length in tokens).
    """
    if missing not in regions.MISSING_PHRASES:
        raise ValueError(f"missing_phrases must be one of {regions.MISSING_PHRASES}, got {missing!r}")
    keys = sorted(clip.tokenize(prompt).keys())
    layout = context_layout(keys)
    if layout is None:
        raise ValueError(f"clip: Stroke Regions to Words does not know where this text encoder (tokenizer keys "
                         f"{keys}) puts the prompt's words in the model's context")
    patterns = {}
    for phrase in set(phrases):
        patterns[phrase] = {}
        for segment in layout:
            for key in segment.keys:
                variants = []
                for text in (phrase, " " + phrase):  # byte-level BPE (Qwen) tokenises a word first and inside apart
                    ids = [t for _, t in segment.content(clip, key, clip.tokenize(text))]
                    if ids and ids not in variants:
                        variants.append(ids)
                if not variants:
                    raise ValueError(f"region_spec: the phrase {phrase!r} has no tokens")
                patterns[phrase][key] = variants

    def locate(text: str):
        tokens = clip.tokenize(text)
        found, present, offset = [[] for _ in phrases], [True] * len(phrases), 0
        for segment in layout:
            per_key = {key: _spans(segment.content(clip, key, tokens), [patterns[p][key] for p in phrases])
                       for key in segment.keys}
            reference = per_key[segment.keys[0]]
            for key in segment.keys[1:]:
                if per_key[key] != reference:
                    raise ValueError(f"clip: the text encoders '{segment.keys[0]}' and '{key}' tokenise the prompt "
                                     f"differently; region-token attention cannot line up the phrases")
            for row, positions in enumerate(reference):
                present[row] = present[row] and bool(positions)
                found[row].extend(offset + i for i in positions)
            offset += segment.length(tokens)
        return tokens, found, present, offset

    tokens, found, present, length = locate(prompt)
    absent = [p for p, ok in zip(phrases, present) if not ok]
    if absent:
        if missing == "error":
            raise ValueError(f"prompt: the phrase(s) {', '.join(repr(p) for p in absent)} of region_spec are not in "
                             f"the prompt; add them or set missing_phrases to 'append'")
        prompt = ", ".join([prompt.rstrip().rstrip(",")] + list(dict.fromkeys(absent))) if prompt.strip() \
            else ", ".join(dict.fromkeys(absent))
        tokens, found, present, length = locate(prompt)
        still = [p for p, ok in zip(phrases, present) if not ok]
        if still:
            raise ValueError(f"region_spec: the phrase(s) {still} could not be placed in the prompt")
    return tokens, prompt, found, length


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


def positive_rows(region: regions.RegionAttention, batch: int, extra_options) -> tuple:
    """(the batch rows of the positive conditioning inside the region's sigma window, their sigmas), or
    (None, None). The negative rows and rows outside the window are never biased."""
    kinds = list(extra_options.get("cond_or_uncond") or [])
    sigmas = extra_options.get("sigmas")
    if region.is_noop or not kinds or sigmas is None or batch % len(kinds):
        return None, None
    chunk = batch // len(kinds)
    rows = torch.tensor([c * chunk + i for c, kind in enumerate(kinds) if kind == 0 for i in range(chunk)],
                        dtype=torch.long)
    sigmas = sigmas.reshape(-1)
    sigma = sigmas[rows.to(sigmas.device)] if sigmas.numel() == batch else sigmas[:1].expand(len(rows))
    if len(rows):
        keep = region.active(sigma.float().cpu())
        rows, sigma = rows[keep], sigma[keep.to(sigma.device)]
    if not len(rows):
        return None, None
    return rows, sigma


class _RegionPatch:
    """What both region patches share: the region, the patch they wrap (kept across ModelPatcher.clone's deep
    copy of model_options, which would otherwise copy the region's tensors), one warning per patch."""

    def __init__(self, region: regions.RegionAttention, previous=None):
        self.region = region
        self.previous = previous
        self._warned = False

    def __deepcopy__(self, memo):
        return type(self)(self.region, copy.deepcopy(self.previous, memo))

    def _warn(self, message: str) -> None:
        if not self._warned:
            LOG.warning("Stroke Regions to Words: %s", message)
            self._warned = True


class RegionAttentionPatch(_RegionPatch):
    """attn2 replace callable: region-biased attention on the positive rows inside the sigma window; the
    other rows keep the unpatched layer's own attention call. With an earlier replace patch, that patch
    runs on every row and the bias is added to its output as (biased - plain)."""

    def __call__(self, q, k, v, extra_options):
        rows, sigma, grid = self._biased_rows(q, k, extra_options)
        if rows is None:
            return self._unbiased(q, k, v, extra_options)
        rows_dev = rows.to(q.device)
        result = self.region.attention(q[rows_dev], k[rows_dev], v[rows_dev], extra_options["n_heads"], grid,
                                       sigma, with_plain=self.previous is not None)
        if result is None:
            self._warn(f"the conditioning has {k.shape[1]} tokens, not a multiple of the prompt's "
                       f"{self.region.n_tokens} (connect this node's CONDITIONING output); "
                       "this layer is left unbiased")
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
        rows, sigma = positive_rows(self.region, q.shape[0], extra_options)
        if rows is None:
            return None, None, None
        latent_hw = (extra_options.get("original_shape") or [0, 0, 0, 0])[-2:]
        grid = regions.layer_grid(q.shape[1], latent_hw, (extra_options.get("activations_shape") or [])[-2:] or None)
        if grid is None:
            self._warn(f"cannot tell the layout of a layer with {q.shape[1]} query tokens; "
                       "this layer is left unbiased")
            return None, None, None
        return rows, sigma, grid


def patch_model(model, region: regions.RegionAttention):
    """A clone of ``model`` with region attention on every cross-attention site (wrapping any
    attn2 replace patch already there)."""
    sites = cross_attention_sites(model)
    if not sites:
        raise ValueError("model: no text cross-attention layers found; Stroke Regions to Words works with UNet "
                         "models (SD1.x, SD2, SDXL) and the joint-attention transformers Flux.1, SD3.5 and "
                         f"Qwen-Image (this is {type(model.model).__name__})")
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for name, number, index in sites:
        previous = existing.get((name, number, index), existing.get((name, number)))
        patched.set_model_attn2_replace(RegionAttentionPatch(region, previous), name, number, index)
    return patched


# ----------------------------------------------------------------------------------------------
# Joint attention (diffusion transformers: Flux.1, SD3.5, Qwen-Image)

LAYOUT_KEY = "guided_synthesis_regions_layout"  # transformer_options: (text tokens, (h, w) image token grid)
JOINT_FAMILIES = ("Flux", "SD3", "QwenImage")  # model_base classes whose blocks attend over [text, image]
_ATTENTION_ARGS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")


class JointLayout:
    """APPLY_MODEL wrapper: tells the attention override how long the text is and the image token grid of
    this call (the attention itself sees only one joint sequence)."""

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                 **kwargs):
        if c_crossattn is not None:
            p = self.patch_size
            grid = (-(-x.shape[-2] // p), -(-x.shape[-1] // p))
            transformer_options = {**transformer_options, LAYOUT_KEY: (int(c_crossattn.shape[1]), grid)}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def _as_float_mask(mask: torch.Tensor, dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def _mask_rows(mask, rows: torch.Tensor, batch: int):
    """The rows of an attention mask that has a batch dimension (4-D, or 3-D with batch entries)."""
    if mask is None or mask.ndim < 3 or mask.shape[0] != batch or batch == 1:
        return mask
    return mask[rows.to(mask.device)]


class JointRegionOverride(_RegionPatch):
    """``optimized_attention_override``: on the joint attention of a DiT block, the positive rows inside the
    sigma window get the region bias on their image-query x text-key block as an additive attention mask,
    computed by the host's own attention function (any backend); every other row, and every attention that
    is not joint, is the unpatched call. An override already on the model keeps being called for all rows."""

    def _call(self, func, bound: dict):
        args = [bound.pop(name) for name in ("q", "k", "v", "heads")]
        if self.previous is not None:
            return self.previous(func, *args, **bound)
        return func(*args, **bound)

    def __call__(self, func, *args, **kwargs):
        bound = dict(kwargs)
        bound.update(zip(_ATTENTION_ARGS, args))
        q, k, v, heads = bound["q"], bound["k"], bound["v"], int(bound["heads"])
        options = bound.get("transformer_options") or {}
        layout = options.get(LAYOUT_KEY)
        heads_first = bool(bound.get("skip_reshape", False))
        length = q.shape[2] if heads_first else q.shape[1]
        if layout is None or k.shape[-2 if heads_first else 1] != length:
            return self._call(func, bound)
        n_text, grid = layout
        n_image = grid[0] * grid[1]
        if n_text + n_image > length:  # not a joint attention (e.g. SD3.5's image-only second attention)
            return self._call(func, bound)
        rows, sigma = positive_rows(self.region, q.shape[0], options)
        if rows is None:
            return self._call(func, bound)

        def by_heads(t):
            t = t[rows.to(t.device)]
            return t if heads_first else t.reshape(t.shape[0], length, heads, -1).transpose(1, 2)

        qh, kh = by_heads(q), by_heads(k)
        offset = self.region.joint_offset(qh[:, :, n_text:n_text + n_image], kh[:, :, :n_text], grid, sigma)
        if offset is None:
            self._warn(f"the conditioning has {n_text} text tokens, not a multiple of the prompt's "
                       f"{self.region.n_tokens} (connect this node's CONDITIONING output); the model is left unbiased")
            return self._call(func, bound)
        scale = qh.shape[-1] ** -0.5
        mask = torch.zeros(len(rows), offset.shape[1], length, length, dtype=q.dtype, device=q.device)
        mask[:, :, n_text:n_text + n_image, :n_text] = (offset * scale).to(q.dtype)
        if bound.get("mask") is not None:
            previous_mask = _as_float_mask(_mask_rows(bound["mask"], rows, q.shape[0]), q.dtype)
            while previous_mask.ndim < 4:
                previous_mask = previous_mask.unsqueeze(-3 if previous_mask.ndim == 3 else 0)
            mask = mask + previous_mask
        biased = self._call(func, {**bound, "q": q[rows.to(q.device)], "k": k[rows.to(k.device)],
                                   "v": v[rows.to(v.device)], "mask": mask})
        if len(rows) == q.shape[0]:
            return biased
        others = torch.tensor([i for i in range(q.shape[0]) if i not in set(rows.tolist())], dtype=torch.long)
        plain = self._call(func, {**bound, "q": q[others.to(q.device)], "k": k[others.to(k.device)],
                                  "v": v[others.to(v.device)],
                                  "mask": _mask_rows(bound.get("mask"), others, q.shape[0])})
        out = torch.empty((q.shape[0],) + tuple(biased.shape[1:]), dtype=biased.dtype, device=biased.device)
        out[rows.to(out.device)] = biased
        out[others.to(out.device)] = plain.to(out.dtype)
        return out


def is_joint_attention_model(model) -> bool:
    return type(model.model).__name__ in JOINT_FAMILIES


def patch_joint_model(model, region: regions.RegionAttention):
    """A clone of ``model`` whose joint attention is region-biased (wrapping any attention override there)."""
    import comfy.patcher_extension

    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    options["optimized_attention_override"] = JointRegionOverride(region, options.get("optimized_attention_override"))
    patch_size = int(getattr(patched.get_model_object("diffusion_model"), "patch_size", 2) or 2)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "guided_synthesis_regions",
                                 JointLayout(patch_size))
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
                        "training: the words' prompt tokens get more attention from the image inside their region "
                        "(eDiff-I paint-with-words, or DenseDiffusion-style modulation; UNet cross-attention or "
                        "the image-to-text block of Flux.1 / SD3.5 / Qwen-Image joint attention). "
                        "Outputs a patched MODEL "
                        "and the prompt's CONDITIONING for any sampler (KSampler, SamplerCustom, SDEdit, GradOP+).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model: a UNet (SD1.x, SD2, SDXL) or a joint-attention "
                                                "transformer (Flux.1, SD3.5, Qwen-Image). It is cloned, never "
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
            patch = patch_joint_model if is_joint_attention_model(model) else patch_model
            patched = patch(model, region)

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


