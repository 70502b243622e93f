"""Region-token cross-attention: "this red region is a castle" without training.

The GradOP paper (Singh et al., CVPR 2023) names each colour region of a stroke painting with
words through a token <-> region correspondence in cross-attention; its code was never released.
This module implements eDiff-I's *paint-with-words* (Balaji et al. 2022) as docs/methods/regions.md section 2
describes it, plus a DenseDiffusion-style modulation (Kim et al., ICCV 2023):

* ``paint_with_words``: ``A = softmax((QK^T + W) / sqrt(d))`` with ``W[p, j] = w(sigma) * M_r(p)``
  for the tokens j of region r's phrase, ``w(sigma) = strength * log(1 + sigma) * max(QK^T)``, the max
  taken per image over all heads and positions
  (the reference uses 0.4 * w, our default strength is 0.4). The bias fades as sigma -> 0.
* ``dense``: DenseDiffusion's cross-attention modulation (Kim et al., ICCV 2023, as their
  reference code does it): ``S' = S + lambda_t (1 - a(p)) [M (max_row(S) - S) - (1 - M)(S - min_row(S))]``
  where ``M[p, j]`` is 1 if token j belongs to the phrase of the region containing pixel p, every other
  key (other regions' phrases, the rest of the prompt, start/end tokens, padding) is pushed towards the
  row minimum, ``a(p)`` is the area of pixel p's region, and ``lambda_t = strength * t^5`` for
  t = timestep / T >= 0.7 (their first 30 % of 50 DDIM steps), else 0. Their value is strength 1.0.
  Pixels outside every named region are left alone (their code would push every key down there,
  flattening the attention of regions the user did not name). Their self-attention modulation and
  their swap of each phrase's token embeddings for the phrase encoded alone are not done here.

Everything here is pure torch: palette extraction from a stroke image, the region spec syntax,
token spans in a tokenised prompt, mask resizing to each attention layer and the biased attention
itself. The host adapter (an attn2 replace patch) lives in ``nodes/regions.py``.
"""
from __future__ import annotations

import colorsys
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .checks import parse_hex_colour
from .palette import rgb_to_hex

MODES = ("paint_with_words", "dense")
DENSE_T_END = 0.7  # DenseDiffusion modulates the first 30 % of its 50 DDIM steps: timesteps 981 ... 701
MISSING_PHRASES = ("append", "error")

# ----------------------------------------------------------------------------------------------
# Colour names

COLOUR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "pink", "brown",
                "black", "white", "grey", "gray")
_ALIASES = {"gray": "grey", "violet": "purple", "teal": "cyan", "turquoise": "cyan"}
_MODIFIERS = ("light", "dark")


def colour_family(rgb: Sequence[int]) -> str:
    """A plain colour name for an RGB colour (hue families; black/grey/white for greys)."""
    r, g, b = (c / 255.0 for c in rgb)
    hue, lightness, saturation = colorsys.rgb_to_hls(r, g, b)
    value = max(r, g, b)
    chroma = value - min(r, g, b)
    if chroma < 0.12 or saturation < 0.15:
        return "black" if value < 0.2 else "white" if lightness > 0.85 else "grey"
    degrees = hue * 360
    if value < 0.2:
        return "black"
    if degrees < 15 or degrees >= 345:
        family = "red"
    elif degrees < 45:
        family = "orange"
    elif degrees < 70:
        family = "yellow"
    elif degrees < 165:
        family = "green"
    elif degrees < 195:
        family = "cyan"
    elif degrees < 255:
        family = "blue"
    elif degrees < 290:
        family = "purple"
    else:
        family = "magenta"
    if family in ("red", "orange") and value < 0.6 and lightness < 0.45:
        family = "brown"
    if family in ("red", "magenta") and lightness > 0.7:
        family = "pink"
    return family


def _parse_colour_name(text: str) -> tuple[str, str] | None:
    """'light blue' -> ('light', 'blue'); None when it is not a colour name."""
    words = text.lower().replace("-", " ").split()
    modifier = ""
    if len(words) == 2 and words[0] in _MODIFIERS:
        modifier, words = words[0], words[1:]
    if len(words) != 1:
        return None
    name = _ALIASES.get(words[0], words[0])
    if name not in COLOUR_NAMES and name not in _ALIASES.values():
        return None
    return modifier, name


# ----------------------------------------------------------------------------------------------
# Region spec


@dataclass(frozen=True)
class SpecLine:
    """One line of a region spec: ``#RRGGBB: phrase``, ``colour-name: phrase`` or a bare ``phrase``."""

    line: int  # 1-based line number
    phrase: str
    rgb: tuple[int, int, int] | None = None  # for #RRGGBB keys
    name: tuple[str, str] | None = None  # (modifier, family) for colour-name keys

    @property
    def key(self) -> str:
        if self.rgb is not None:
            return rgb_to_hex(self.rgb)
        if self.name is not None:
            return " ".join(p for p in self.name if p)
        return "(in palette order)"


_NAME_KEY = re.compile(r"^[A-Za-z][A-Za-z \-]*$")


def parse_region_spec(text: str, name: str = "region_spec") -> list[SpecLine]:
    """Parse the region spec. Blank lines and lines starting with ``//`` are skipped.

    ``#RRGGBB: phrase`` (or ``#RGB``) and ``colour-name: phrase`` (red, light blue, dark green, ...)
    name a colour; any other line is a bare phrase, given to the unnamed colours in palette order.
    A line whose text before the first ``:`` is a single plain word that is not a colour is an error
    (so a typo never silently becomes a phrase); put weight syntax such as ``(castle:1.2)`` in the
    prompt or phrase freely.
    """
    lines: list[SpecLine] = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        key, sep, rest = line.partition(":")
        key = key.strip()
        if sep and key.startswith("#"):
            rgb = tuple(round(c * 255) for c in parse_hex_colour(key, f"{name} line {number}"))
            phrase = rest.strip()
            if not phrase:
                raise ValueError(f"{name} line {number}: empty phrase for {key}")
            lines.append(SpecLine(number, phrase, rgb=rgb))
        elif sep and _NAME_KEY.match(key) and len(key.split()) <= 2:
            colour = _parse_colour_name(key)
            if colour is None:
                if len(key.split()) == 1:
                    raise ValueError(f"{name} line {number}: unknown colour {key!r}; use #RRGGBB or one of "
                                     f"{', '.join(n for n in COLOUR_NAMES if n != 'gray')} "
                                     f"(optionally 'light'/'dark')")
                lines.append(SpecLine(number, line))  # e.g. "a castle: tall" reads as a phrase
                continue
            phrase = rest.strip()
            if not phrase:
                raise ValueError(f"{name} line {number}: empty phrase for {key}")
            lines.append(SpecLine(number, phrase, name=colour))
        else:
            if line.startswith("#"):
                raise ValueError(f"{name} line {number}: expected '#RRGGBB: phrase', got {line!r}")
            lines.append(SpecLine(number, line))
    return lines


def resolve_regions(spec: list[SpecLine], colours: list[tuple[int, int, int]], tolerance: float = 24.0,
                    name: str = "region_spec") -> list[str | None]:
    """The phrase of each palette colour (None = unnamed), from parsed spec lines.

    A #RRGGBB key takes the nearest palette colour within 3x ``tolerance``; a colour name takes the
    palette colour of that hue family ('light'/'dark' pick the lightest/darkest of several); bare
    phrases go to the remaining colours in palette order. Duplicate colours, unknown colours, names
    that match several colours and more bare phrases than colours are errors naming the line.
    """
    palette_text = ", ".join(f"{rgb_to_hex(c)} ({colour_family(c)})" for c in colours) or "none"
    phrases: list[str | None] = [None] * len(colours)
    owner: dict[int, SpecLine] = {}

    def claim(index: int, line: SpecLine) -> None:
        if index in owner:
            raise ValueError(f"{name}: colour {rgb_to_hex(colours[index])} is named twice (line {owner[index].line} "
                             f"'{owner[index].key}' and line {line.line} '{line.key}')")
        owner[index] = line
        phrases[index] = line.phrase

    for line in spec:
        if line.rgb is not None:
            if not colours:
                raise ValueError(f"{name} line {line.line}: the stroke image has no colour regions")
            distances = [math.dist(line.rgb, c) for c in colours]
            best = min(range(len(colours)), key=distances.__getitem__)
            if distances[best] > 3 * tolerance:
                raise ValueError(f"{name} line {line.line}: colour {line.key} is not in the stroke image; "
                                 f"its colours are {palette_text}")
            claim(best, line)
        elif line.name is not None:
            modifier, family = line.name
            family = _ALIASES.get(family, family)
            candidates = [i for i, c in enumerate(colours) if colour_family(c) == family]
            if not candidates:
                raise ValueError(f"{name} line {line.line}: no region of the stroke image is {family}; "
                                 f"its colours are {palette_text}")
            if len(candidates) > 1:
                if not modifier:
                    options = ", ".join(rgb_to_hex(colours[i]) for i in candidates)
                    raise ValueError(f"{name} line {line.line}: '{family}' matches several colours ({options}); "
                                     f"write 'light {family}' / 'dark {family}' or a #RRGGBB code")
                lightness = [sum(colours[i]) for i in candidates]
                pick = max if modifier == "light" else min
                candidates = [candidates[lightness.index(pick(lightness))]]
            claim(candidates[0], line)
    bare = [line for line in spec if line.rgb is None and line.name is None]
    free = [i for i in range(len(colours)) if i not in owner]
    if len(bare) > len(free):
        raise ValueError(f"{name}: {len(bare)} phrases without a colour but only {len(free)} colours left to "
                         f"give them (line {bare[len(free)].line} '{bare[len(free)].phrase}' has none); "
                         f"the stroke image's colours are {palette_text}")
    for line, index in zip(bare, free):
        claim(index, line)
    return phrases


# ----------------------------------------------------------------------------------------------
# Token spans

TokenChunks = Sequence[Sequence[int | None]]  # tokenised prompt: chunks of ids (None = embedding vector)


def content_positions(chunks: TokenChunks, start_token: int | None, end_token: int | None) -> list[tuple[int, int | None]]:
    """(absolute position, id) of every content token: chunk c, index i -> position c * len + i.

    The start token (BOS) at index 0, the end token (EOS) and the padding after it are excluded.
    """
    out = []
    offset = 0
    for chunk in chunks:
        first = 1 if start_token is not None and len(chunk) and chunk[0] == start_token else 0
        for i in range(first, len(chunk)):
            if end_token is not None and chunk[i] == end_token:
                break
            out.append((offset + i, chunk[i]))
        offset += len(chunk)
    return out


def find_subsequence(sequence: Sequence[int | None], pattern: Sequence[int]) -> list[int]:
    """Start indices of every occurrence of ``pattern`` in ``sequence`` (non-overlapping, left to right)."""
    found, i, n = [], 0, len(pattern)
    if n == 0:
        return found
    while i + n <= len(sequence):
        if all(sequence[i + k] == pattern[k] for k in range(n)):
            found.append(i)
            i += n
        else:
            i += 1
    return found


def phrase_token_positions(prompt: TokenChunks, phrases: Sequence[Sequence[int]], start_token: int | None,
                           end_token: int | None) -> list[list[int]]:
    """Absolute token positions of each phrase (given as its token ids) in the tokenised prompt.

    Every occurrence counts (a repeated word is biased everywhere it appears); longer phrases claim
    their tokens first, so 'castle' does not also take the tokens of another region's 'castle tower'.
    Empty lists mean the phrase is not in the prompt.
    """
    content = content_positions(prompt, start_token, end_token)
    ids = [token for _, token in content]
    claimed: dict[int, tuple[int, ...]] = {}
    result: list[list[int]] = [[] for _ in phrases]
    for index in sorted(range(len(phrases)), key=lambda k: -len(phrases[k])):
        pattern = tuple(phrases[index])
        for start in find_subsequence(ids, pattern):
            span = range(start, start + len(pattern))
            if any(claimed.get(k, pattern) != pattern for k in span):
                continue  # inside an occurrence of a longer phrase of another region
            for k in span:
                claimed[k] = pattern
            result[index].extend(content[k][0] for k in span)
    return [sorted(set(r)) for r in result]


# ----------------------------------------------------------------------------------------------
# Masks at each attention layer


def layer_grid(n_tokens: int, latent_hw: tuple[int, int], hint_hw: Sequence[int] | None = None) -> tuple[int, int] | None:
    """(h, w) of an attention layer with ``n_tokens`` query tokens.

    ``hint_hw`` (the layer's activation size, when the host provides it) wins when consistent;
    otherwise the latent size is halved with rounding up (a stride-2 convolution with padding 1)
    until it matches, which keeps odd sizes and aspect ratios exact. None when nothing matches.
    """
    if hint_hw is not None and len(hint_hw) == 2 and int(hint_hw[0]) * int(hint_hw[1]) == n_tokens:
        return int(hint_hw[0]), int(hint_hw[1])
    h, w = int(latent_hw[0]), int(latent_hw[1])
    for _ in range(8):
        if h * w == n_tokens:
            return h, w
        h, w = (h + 1) // 2, (w + 1) // 2
    return None


def resize_masks(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[R, H, W] -> [R, h, w] by area averaging (soft coverage at each layer pixel)."""
    return F.interpolate(masks.unsqueeze(1).float(), size=(h, w), mode="area").squeeze(1)


@dataclass
class RegionAttention:
    """Everything the biased cross-attention needs, independent of the host.

    ``masks`` [R, H, W] (1 = region), ``token_masks`` [R, L] (1 = token of region r's phrase, in the
    L = 77 * chunks prompt positions). Resized biases are cached per layer size.
    """

    masks: torch.Tensor
    token_masks: torch.Tensor
    strength: float = 0.4
    mode: str = "paint_with_words"
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    sigma_to_t: Callable[[float], float] | None = None  # for dense mode: timestep / T in [0, 1]
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.masks = self.masks.detach().float().cpu().clone()
        self.token_masks = self.token_masks.detach().float().cpu().clone()
        if self.masks.shape[0] != self.token_masks.shape[0]:
            raise ValueError("masks and token_masks must have one row per region")
        self.region_area = self.masks.flatten(1).mean(1)  # for DenseDiffusion's size factor (1 - area)

    def __deepcopy__(self, memo):  # immutable after construction; ModelPatcher.clone deep-copies model_options
        return self

    @property
    def n_tokens(self) -> int:
        return self.token_masks.shape[1]

    @property
    def is_noop(self) -> bool:
        return self.strength == 0 or not bool(self.token_masks.any())

    def active(self, sigma: torch.Tensor) -> torch.Tensor:
        """Which rows are inside the sigma window [sigma_end, sigma_start]."""
        return (sigma <= self.sigma_start * (1 + 1e-5)) & (sigma >= self.sigma_end * (1 - 1e-5))

    def layer_bias(self, h: int, w: int, n_keys: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """([h*w, n_keys] max over regions of M_r(p) on region r's tokens, [h*w, 1] DenseDiffusion's size
        factor sum_r M_r(p) (1 - area_r): 1 - the area of p's region, 0 outside every region); None if n_keys is not a whole number of prompt lengths (the conditioning is not the one
        the spans came from)."""
        if n_keys % self.n_tokens:
            return None
        key = (h, w, n_keys, str(device), dtype)
        if key not in self._cache:
            masks = resize_masks(self.masks, h, w).flatten(1)  # [R, hw]
            bias = (masks.T.unsqueeze(2) * self.token_masks.unsqueeze(0)).amax(1)  # [hw, L]
            size_factor = (masks.T @ (1 - self.region_area)).unsqueeze(1)  # [hw, 1]
            bias = bias.repeat(1, n_keys // self.n_tokens)
            self._cache[key] = (bias.to(device, dtype), size_factor.to(device, dtype))
        return self._cache[key]

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-row multiplier: strength * log(1 + sigma) (paint-with-words), or strength * t^5 while
        t >= DENSE_T_END and 0 after (dense)."""
        if self.mode == "paint_with_words":
            return self.strength * torch.log1p(sigma.float().clamp_min(0))
        if self.sigma_to_t is None:
            raise ValueError("dense mode needs sigma_to_t")
        times = [self.sigma_to_t(float(s)) for s in sigma]
        return self.strength * torch.tensor([t ** 5 if t >= DENSE_T_END else 0.0 for t in times], device=sigma.device)

    def joint_offset(self, q_image: torch.Tensor, k_text: torch.Tensor, grid: tuple[int, int],
                     sigma: torch.Tensor) -> torch.Tensor | None:
        """The term added to the unscaled scores QK^T of a joint (text + image) attention on its image-query x
        text-key block, from [B, heads, h*w, d] image queries and [B, heads, T, d] text keys.

        paint_with_words: ``w(sigma) max(QK^T) M`` ([B, 1, h*w, T]), the max taken per image over the heads,
        the image queries and the text keys (the block that plays the role of a UNet's cross-attention).
        dense: ``f_in (max_row - S) - f_out (S - min_row)`` ([B, heads, h*w, T]), rows over the text keys only.
        The text queries and the image keys are left alone. None if T is not a whole number of prompt lengths.
        """
        cached = self.layer_bias(grid[0], grid[1], k_text.shape[-2], q_image.device, torch.float32)
        if cached is None:
            return None
        bias, size_factor = cached
        scores = q_image.float() @ k_text.float().transpose(-1, -2)  # [B, heads, hw, T]
        weight = self.weight(sigma).to(q_image.device).view(-1, 1, 1, 1)
        if self.mode == "paint_with_words":
            block_peak = scores.amax(dim=(1, 2, 3), keepdim=True).clamp_min(0)  # per image
            return (weight * block_peak) * bias
        factor = weight * size_factor
        f_in = factor * bias
        f_out = factor - f_in
        return f_in * (scores.amax(-1, keepdim=True) - scores) - f_out * (scores - scores.amin(-1, keepdim=True))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, grid: tuple[int, int],
                  sigma: torch.Tensor, with_plain: bool = False):
        """Biased attention of [B, Lq, heads*d] queries; returns [B, Lq, heads*d] in q's dtype.

        ``with_plain`` also returns the unbiased attention computed the same way (for composing with
        another patch as a difference). Returns None if the keys do not match the prompt length.
        """
        cached = self.layer_bias(grid[0], grid[1], k.shape[1], q.device, torch.float32)
        if cached is None:
            return None
        bias, size_factor = cached
        batch, n_query, inner = q.shape
        dim = inner // heads
        scale = dim ** -0.5
        qh = q.float().reshape(batch, n_query, heads, dim).transpose(1, 2)
        kh = k.float().reshape(batch, -1, heads, dim).transpose(1, 2)
        vh = v.float().reshape(batch, -1, heads, dim).transpose(1, 2)
        weight = self.weight(sigma).to(q.device).view(batch, 1, 1, 1)
        scores = qh @ kh.transpose(-1, -2)  # [B, heads, Lq, Lk], unscaled QK^T
        if self.mode == "paint_with_words":
            # one max per image over its heads and positions, as the reference's qk.max() for one image;
            # not over the batch, so an image does not change with what it is batched with
            peak = scores.amax(dim=(-3, -2, -1), keepdim=True).clamp_min(0)
            biased = torch.addcmul(scores, weight * peak, bias)  # QK^T + w(sigma) max(QK^T) M
        else:
            # S + f_in (max_row - S) - f_out (S - min_row) = S (1 - f_in - f_out) + f_in max_row + f_out min_row
            factor = weight * size_factor  # [B, 1, Lq, 1]
            f_in = factor * bias  # [B, 1, Lq, Lk]: no head dimension, cheap
            f_out = factor - f_in
            row_max = scores.amax(-1, keepdim=True)
            row_min = scores.amin(-1, keepdim=True)
            biased = torch.addcmul(f_in * row_max + f_out * row_min, scores, 1 - f_in - f_out)
        out = torch.softmax(biased * scale, dim=-1) @ vh
        out = out.transpose(1, 2).reshape(batch, n_query, inner).to(q.dtype)
        if not with_plain:
            return out
        plain = (torch.softmax(scores * scale, dim=-1) @ vh).transpose(1, 2).reshape(batch, n_query, inner)
        return out, plain.to(q.dtype)
