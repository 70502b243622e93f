"""Stroke Regions to Words against the paint-with-words formula and the README's region rule.

eDiff-I's paint-with-words (README "Modes"; docs/methods/regions.md section 2):
    A = softmax((QK^T + W) / sqrt(d)),  W[p, j] = strength * log(1 + sigma) * max(QK^T) * M_r(p)  for the tokens j of
    region r's phrase (0 elsewhere), max(QK^T) per image over heads, query positions and keys, M_r the region mask
    area-averaged to the layer's grid; positive (conditional) rows only, the negative rows unpatched.
Regions (README "colour_tolerance", "min_region_percent", defaults 24 and 0.2 %): colours closer than the tolerance
form one region; a region below the minimum share (or, docs/methods/regions.md section 5, no more than an edge band)
is a speck, and every pixel goes to the nearest region colour.

Here the prompt is longer than 77 tokens (two chunks) with "castle" in the second chunk; the 128 x 128 painting has
jitter within the tolerance, an anti-aliased edge two pixels wide (each column 0.8 % of the image but no interior:
an edge band) and a 5 x 5 speck (0.15 % < 0.2 %, though its eroded interior is large enough: only the area rule
removes it). The q, k, v each
cross-attention layer received and the output it returned are recorded inside the executor (GS_TestAttentionCapture);
the expected output is recomputed here from the formula, with masks and token positions derived independently.

Tolerance: 1e-5 on attention outputs of magnitude ~1 (the node computes the biased rows with explicit float32
matmuls, the unbiased rows with ComfyUI's attention kernel, the reference everything in float64; measured 2.2e-6 at
most over all sites and rows). A wrong mask (the speck left in red's region), a batch-wide max(QK^T) or a missing
log(1 + sigma) moves outputs by more than 1e-3 (asserted).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from . import reference as ref
from devkit import graphs
from devkit.tolerance import ORACLE, assert_close_across_paths

from .common import base_prompt, max_difference

RED, BLUE = (200, 40, 40), (40, 70, 210)
JITTER = (212, 32, 46)  # 15.6 from RED: inside the tolerance 24
EDGE_RED, EDGE_BLUE = (160, 48, 82), (80, 62, 168)  # the anti-aliased edge: 58.5 from its own side, 177 from the other
SPECK = (40, 200, 40)  # 25 pixels inside the red half; 214 from BLUE, 226 from RED: merged into blue
SIZE = 128
PROMPT = "a river flowing, " + "a green field, " * 25 + "a tall castle"
PAINTING = "gs_oracle_regions.png"
ATOL = 1e-5


def painting() -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:, :62] = RED
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(62), indexing="ij")
    img[:, :62][(rows * 7 + cols * 3) % 11 == 0] = JITTER
    img[:, 62] = EDGE_RED
    img[:, 63] = EDGE_BLUE
    img[:, 64:] = BLUE
    img[16:21, 16:21] = SPECK
    return img


def expected_masks() -> torch.Tensor:
    """[red, blue] (reading order: red has the first pixel): jitter and the red-side edge column are red; the speck
    and the blue-side edge column are blue."""
    red = torch.zeros(SIZE, SIZE)
    red[:, :63] = 1.0
    red[16:21, 16:21] = 0.0
    return torch.stack([red, 1 - red])


@pytest.fixture(scope="module")
def painting_file(host):
    import folder_paths
    Image.fromarray(painting()).save(f"{folder_paths.get_input_directory()}/{PAINTING}")
    return PAINTING


def token_positions(clip, text: str, phrase: str) -> list[int]:
    """Absolute positions (chunk c, index i -> 77 c + i) of every occurrence of the phrase's content tokens."""
    def ids(chunk):
        return [t[0] for t in chunk]
    start, end = ids(clip.tokenize("")["l"][0])[:2]
    pattern = [t for t in ids(clip.tokenize(phrase)["l"][0]) if t not in (start, end)]
    positions = []
    for c, chunk in enumerate(clip.tokenize(text)["l"]):
        tokens = ids(chunk)
        for i in range(len(tokens) - len(pattern) + 1):
            if tokens[i:i + len(pattern)] == pattern:
                positions += [77 * c + i + k for k in range(len(pattern))]
    return positions


def regions_graph(strength=None):
    prompt = base_prompt(clip=True)
    prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    prompt["5"] = {"class_type": "LoadImage", "inputs": {"image": PAINTING}}
    inputs = {"model": ["1", 0], "clip": ["1", 1], "stroke": ["5", 0], "prompt": PROMPT,
              "region_spec": "red: castle\nblue: river", "mode": "paint_with_words", "start_percent": 0.0,
              "end_percent": 1.0, "missing_phrases": "error", "strength": 0.4 if strength is None else strength}
    prompt["6"] = {"class_type": "GS_StrokeRegions", "inputs": inputs}  # colour_tolerance, min_region_percent: defaults
    graphs.empty_latent(prompt, "10", SIZE, SIZE, batch=2)
    return prompt


def attention_capture(prompt, node_id, key, model, sigma=6.0):
    prompt[node_id] = {"class_type": "GS_TestAttentionCapture", "inputs": {
        "model": list(model), "positive": ["6", 1], "negative": ["3", 0], "latent": ["10", 0], "key": key,
        "sigma": sigma, "seed": 3}}


def bias_matrix(masks, token_sets, grid, n_keys, n_tokens):
    """[h*w, n_keys]: max over regions of M_r(p) on region r's tokens, tiled over whole multiples of the prompt."""
    h, w = grid
    small = F.interpolate(masks[:, None], size=(h, w), mode="area")[:, 0].reshape(len(masks), -1)  # [R, hw]
    bias = torch.zeros(h * w, n_tokens)
    for r, tokens in enumerate(token_sets):
        bias[:, tokens] = torch.maximum(bias[:, tokens], small[r][:, None].expand(-1, len(tokens)))
    assert n_keys % n_tokens == 0
    return bias.repeat(1, n_keys // n_tokens)


def layer_grid(n_query: int) -> tuple[int, int]:
    h = w = SIZE // 8  # the latent; each UNet level halves it
    while h * w != n_query:
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def test_paint_with_words_is_the_formula_on_a_two_chunk_prompt(host, store, tiny, painting_file):
    prompt = regions_graph()
    attention_capture(prompt, "20", "patched", ("6", 0))
    attention_capture(prompt, "21", "plain", ("1", 0))
    result, _ = host.run(prompt)
    clip = tiny.clip_factory()
    castle = token_positions(clip, PROMPT, "castle")
    river = token_positions(clip, PROMPT, "river")
    assert castle and min(castle) > 77 and river and max(river) < 77  # castle in the second chunk
    n_tokens = 77 * len(clip.tokenize(PROMPT)["l"])
    assert n_tokens == 154
    masks = expected_masks()
    strength, sigma = 0.4, 6.0  # the node's default strength (eDiff-I's 0.4)

    calls = store["patched"]
    assert len(calls) == 7 and len(store["plain"]) == 7  # every cross-attention site of the tiny SD1 UNet, once
    biased_checked = 0
    worst = 0.0
    for call, plain_call in zip(calls, store["plain"]):
        q, k, v, out, heads = call["q"], call["k"], call["v"], call["out"], call["n_heads"]
        kinds = call["cond_or_uncond"]
        chunk = q.shape[0] // len(kinds)
        grid = layer_grid(q.shape[1])
        bias = bias_matrix(masks, [castle, river], grid, k.shape[1], n_tokens)
        for c, kind in enumerate(kinds):
            rows = slice(c * chunk, (c + 1) * chunk)
            if kind == 0:
                expected = ref.paint_with_words(q[rows], k[rows], v[rows], heads, bias, strength, sigma)
                biased_checked += chunk
            else:
                expected = ref.plain_attention(q[rows], k[rows], v[rows], heads)
            worst = max(worst, max_difference(out[rows], expected))
            assert_close_across_paths(out[rows], expected, rtol=ATOL, why=ORACLE,
                                      what=f"{call['site']} {'positive' if kind == 0 else 'negative'}")
        assert float(call["sigmas"].max()) == pytest.approx(sigma) and float(call["sigmas"].min()) == pytest.approx(sigma)
    assert biased_checked == 7 * 2  # a batch of 2 images, positive rows, at every site
    print(f"\nworst |node - formula| over all sites and rows: {worst:.2e}")

    # the comparison can fail: the speck left inside the red region, the max over the whole batch instead of per
    # image, or no log(1 + sigma) factor, all land outside the tolerance on the positive rows
    call = calls[0]
    q, k, v, heads = call["q"], call["k"], call["v"], call["n_heads"]
    positive = [i for c, kind in enumerate(call["cond_or_uncond"]) if kind == 0
                for i in range(c * (q.shape[0] // len(call["cond_or_uncond"])), (c + 1) * (q.shape[0] // len(call["cond_or_uncond"])))]
    grid = layer_grid(q.shape[1])
    speckless = torch.stack([torch.zeros(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    speckless[0, :, :63] = 1
    speckless[1] = 1 - speckless[0]
    wrong_mask = ref.paint_with_words(q[positive], k[positive], v[positive], heads,
                                      bias_matrix(speckless, [castle, river], grid, k.shape[1], n_tokens), strength, sigma)
    assert max_difference(wrong_mask, call["out"][positive]) > 100 * ATOL
    no_log = ref.paint_with_words(q[positive], k[positive], v[positive], heads,
                                  bias_matrix(masks, [castle, river], grid, k.shape[1], n_tokens), strength,
                                  math.e - 1)
    assert max_difference(no_log, call["out"][positive]) > 100 * ATOL
    joint = bias_matrix(masks, [castle, river], grid, k.shape[1], n_tokens)
    qp, kp = q[positive], k[positive]
    d = qp.shape[-1] // heads
    scores = torch.einsum("bqhd,bkhd->bhqk", qp.double().reshape(len(positive), qp.shape[1], heads, d),
                          kp.double().reshape(len(positive), kp.shape[1], heads, d))
    per_image = scores.reshape(len(positive), -1).max(1).values
    assert float((per_image - per_image.max()).abs().max()) > 1e-3  # the two images' maxima differ: per image matters
    batch_max = scores.max().clamp_min(0)
    w = strength * math.log(1 + sigma) * batch_max
    attn = torch.softmax((scores + w * joint.double()) / math.sqrt(d), dim=-1)
    vh = v[positive].double().reshape(len(positive), -1, heads, d).permute(0, 2, 1, 3)
    batch_wide = (attn @ vh).permute(0, 2, 1, 3).reshape(len(positive), q.shape[1], -1)
    assert max_difference(batch_wide, call["out"][positive]) > 100 * ATOL


def test_region_masks_follow_the_readme_defaults(host, store, painting_file):
    """Palette, areas and the labelled preview for a painting with jitter, an anti-aliased edge and a speck, with
    the default colour_tolerance (24) and min_region_percent (0.2 %)."""
    prompt = regions_graph()
    prompt["30"] = {"class_type": "GS_TestCapture", "inputs": {"key": "preview", "image": ["6", 2]}}
    result, _ = host.run(prompt)
    palette = result["outputs"]["6"]["gs_palette"][0]
    masks = expected_masks()
    assert palette["colours"] == ["#%02x%02x%02x" % RED, "#%02x%02x%02x" % BLUE]  # the most frequent exact shades
    assert palette["phrases"] == ["castle", "river"]
    expected_areas = [float(m.mean()) for m in masks]  # 8039 / 16384 and 8345 / 16384
    assert palette["areas"] == pytest.approx(expected_areas, abs=5.1e-5), (palette["areas"], expected_areas)
    assert palette["tolerance"] == 24
    # the speck (25 px) in red's region, or the edge columns (128 px each) as regions, would change the areas
    assert abs(expected_areas[0] - 63 * SIZE / SIZE ** 2) > 1e-3

    preview = store["preview"][0]  # [128, 128, 3]: region colours, borders darkened to 35 %, labels
    red, blue = torch.tensor(RED) / 255, torch.tensor(BLUE) / 255
    near = lambda pixel, colour: float((preview[pixel] - colour).abs().max()) < 2.5 / 255  # noqa: E731  abs: 8-bit colours
    assert near((100, 10), red) and near((100, 100), blue) and near((100, 5), red)  # (100, 5) is a jitter pixel
    assert near((18, 18), blue)  # the speck's interior: blue's
    for pixel in [(16, 16), (16, 20), (20, 18)]:  # the speck's rim: blue's border, not red's
        assert near(pixel, 0.35 * blue), (pixel, preview[pixel])
    assert near((15, 18), 0.35 * red)  # red's border around the hole
    assert near((100, 62), 0.35 * red) and near((100, 63), 0.35 * blue)  # the edge columns, each to its side
