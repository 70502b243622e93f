"""guidance/regions.py: palette extraction, region spec, token spans, layer grids, biased attention.
Pure torch, no host."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from guidance import palette as palettes, regions
from devkit.tolerance import FORMULA, assert_close_across_paths

RED, BLUE, YELLOW, GREEN = (220, 40, 30), (40, 90, 200), (250, 210, 80), (70, 150, 60)


def antialiased(size: int, draw_fn, background, supersample: int = 4):
    """Draw at 4x and downsample with a box filter: real anti-aliased edges. Also returns the exact
    per-colour coverage at the target size (the fraction of each pixel's sub-pixels of each colour)."""
    big = Image.new("RGB", (size * supersample,) * 2, background)
    draw_fn(ImageDraw.Draw(big), supersample)
    small = big.resize((size, size), Image.BOX)
    image = torch.from_numpy(np.asarray(small).copy()).float() / 255
    hi = torch.from_numpy(np.asarray(big).copy()).long()
    return image, hi


def coverage(hi: torch.Tensor, colour, size: int) -> torch.Tensor:
    exact = (hi == torch.tensor(colour)).all(-1).float()
    return F.avg_pool2d(exact[None, None], hi.shape[0] // size)[0, 0]


def scene(draw, s):
    draw.ellipse([10 * s, 8 * s, 30 * s, 28 * s], fill=RED)
    draw.polygon([(40 * s, 60 * s), (60 * s, 20 * s), (63 * s, 60 * s)], fill=YELLOW)
    draw.rectangle([0, 44 * s, 36 * s, 63 * s], fill=GREEN)


def test_palette_on_antialiased_strokes_gives_the_right_masks():
    image, hi = antialiased(64, scene, BLUE)
    palette = palettes.extract_palette(image, tolerance=24, min_area=0.002)
    assert sorted(palette.colours) == sorted([RED, BLUE, YELLOW, GREEN])
    # reading order: blue background (row 0) first, then red circle, then yellow, then green
    assert palette.colours[0] == BLUE and palette.colours[1] == RED
    # a partition of the image (0/1 masks: the sum is exact arithmetic)
    torch.testing.assert_close(palette.masks.sum(0), torch.ones(64, 64), atol=0, rtol=0)  # exact: 0/1 partition
    truths = {colour: coverage(hi, colour, 64) for colour in palette.colours}
    for colour, mask in zip(palette.colours, palette.masks):
        truth = truths[colour]
        others = torch.stack([t for c, t in truths.items() if c != colour]).amax(0)
        # pixels mostly of this colour are in the mask, pixels mostly of another colour are not
        assert bool((mask[truth > 0.6] == 1).all()), colour
        assert bool((mask[others > 0.6] == 0).all()), colour
        iou = ((mask > 0) & (truth > 0.5)).sum() / ((mask > 0) | (truth > 0.5)).sum()
        assert iou > 0.93, (colour, float(iou))
    assert all(abs(a - float(m.mean())) < 1e-6 for a, m in zip(palette.areas, palette.masks))


def test_palette_drops_specks_and_edge_bands_and_tolerates_noise():
    image, _ = antialiased(64, lambda d, s: d.rectangle([0, 0, 31 * s + 1, 64 * s], fill=RED), BLUE)
    image[5, 50] = torch.tensor([0.0, 1.0, 0.0])  # one green speck inside blue
    noisy = (image + 0.03 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    for picture in (image, noisy):
        palette = palettes.extract_palette(picture, tolerance=40, min_area=0.002)
        assert len(palette.colours) == 2, palette.colours
        red = palette.masks[[i for i, c in enumerate(palette.colours) if c[0] > 128][0]]
        assert red[:, :31].min() == 1 and red[:, 33:].max() == 0


def test_palette_single_colour_and_bad_shape():
    palette = palettes.extract_palette(torch.full((16, 16, 3), 0.5))
    assert len(palette.colours) == 1 and palette.masks.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="stroke image"):
        palettes.extract_palette(torch.zeros(16, 16))


def test_colour_families():
    assert regions.colour_family(RED) == "red"
    assert regions.colour_family(BLUE) == "blue"
    assert regions.colour_family(YELLOW) == "yellow"
    assert regions.colour_family(GREEN) == "green"
    assert regions.colour_family((255, 255, 255)) == "white"
    assert regions.colour_family((10, 10, 10)) == "black"
    assert regions.colour_family((128, 128, 130)) == "grey"
    assert regions.colour_family((120, 70, 30)) == "brown"


def test_region_spec_parsing_and_resolution():
    spec = regions.parse_region_spec("// comment\n#DC281E: a castle\n\nlight blue : sky\nriver\n(sun:1.2)\n")
    assert [(line.line, line.phrase) for line in spec] == [(2, "a castle"), (4, "sky"), (5, "river"), (6, "(sun:1.2)")]
    assert spec[0].rgb == (0xDC, 0x28, 0x1E) and spec[1].name == ("light", "blue")
    colours = [(110, 170, 235), RED, (40, 100, 170), YELLOW]
    assert regions.resolve_regions(spec, colours) == ["sky", "a castle", "river", "(sun:1.2)"]
    assert regions.parse_region_spec("#abc: x")[0].rgb == (0xAA, 0xBB, 0xCC)


@pytest.mark.parametrize("text,colours,message", [
    ("rde: castle", [RED], "line 1: unknown colour 'rde'"),
    ("red:", [RED], "line 1: empty phrase for red"),
    ("#ff0000:   ", [RED], "empty phrase"),
    ("#ff00zz: castle", [RED], "not a #RRGGBB colour"),
    ("red: castle\n#dc281e: tower", [RED, BLUE], "named twice (line 1 'red' and line 2 '#dc281e')"),
    ("#00ff00: grass", [RED, BLUE], "#00ff00 is not in the stroke image"),
    ("green: grass", [RED, BLUE], "no region of the stroke image is green"),
    ("blue: sea", [(110, 170, 235), (40, 100, 170)], "'blue' matches several colours"),
    ("a\nb\nc", [RED, BLUE], "3 phrases without a colour but only 2"),
])
def test_region_spec_errors(text, colours, message):
    with pytest.raises(ValueError) as error:
        regions.resolve_regions(regions.parse_region_spec(text), colours)
    assert message in str(error.value)
    assert "region_spec" in str(error.value)


BOS, EOS = 49406, 49407


def chunk(ids, length=77, pad=EOS):
    row = [BOS] + list(ids) + [EOS]
    return row + [pad] * (length - len(row))


def test_token_positions_offsets_chunks_and_repeats():
    castle, river, tower, a = 10, 20, 30, 1
    prompt = [chunk([a, castle, tower, a, river] + [a] * 60 + [castle]), chunk([a, river, castle])]
    spans = regions.phrase_token_positions(prompt, [[castle], [river], [castle, tower]], BOS, EOS)
    # +1 for BOS; chunk 1 starts at 77; 'castle tower' claims its castle; repeated words all count
    assert spans[2] == [2, 3]
    assert spans[0] == [66, 80]
    assert spans[1] == [5, 79]


def test_token_positions_pad_token_zero_and_missing_and_embeddings():
    prompt = [chunk([0, 5, 6], pad=0)]  # clip_g pads with 0, which is also the id of '!'
    assert regions.phrase_token_positions(prompt, [[0], [7], [5, 6]], BOS, EOS) == [[1], [], [2, 3]]
    with_embedding = [[BOS, None, 5, EOS]]
    assert regions.phrase_token_positions(with_embedding, [[5]], BOS, EOS) == [[2]]


def test_layer_grid_for_odd_sizes():
    assert regions.layer_grid(64 * 96, (64, 96)) == (64, 96)
    assert regions.layer_grid(5 * 3, (9, 5)) == (5, 3)  # ceil halving of an odd latent
    assert regions.layer_grid(3 * 2, (9, 5)) == (3, 2)
    assert regions.layer_grid(12, (9, 5), hint_hw=(3, 4)) == (3, 4)
    assert regions.layer_grid(7, (9, 5)) is None


def make_region(mode="paint_with_words", strength=0.5, n_tokens=77):
    masks = torch.zeros(1, 8, 8)
    masks[0, :, :4] = 1  # left half
    token_masks = torch.zeros(1, n_tokens)
    token_masks[0, 3] = 1
    return regions.RegionAttention(masks, token_masks, strength=strength, mode=mode,
                                   sigma_to_t=lambda s: min(1.0, s / 14.6))


def qkv(batch=2, n_query=64, n_keys=77, heads=2, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, heads * dim, generator=gen) for n in (n_query, n_keys, n_keys)]


def reference_attention(q, k, v, heads, bias):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return (torch.softmax((qh @ kh.transpose(-1, -2) + bias) / math.sqrt(d), -1) @ vh).transpose(1, 2).reshape(b, n, inner)


def test_paint_with_words_matches_the_formula():
    region = make_region(strength=0.5)
    q, k, v = qkv()
    sigma = torch.tensor([3.0, 0.5])
    out = region.attention(q, k, v, 2, (8, 8), sigma)
    d = 8
    scores = (q.reshape(2, 64, 2, d).transpose(1, 2) @ k.reshape(2, 77, 2, d).transpose(1, 2).transpose(-1, -2))
    peak = scores.amax(dim=(1, 2, 3), keepdim=True).clamp_min(0)  # per image, over heads and positions
    w = 0.5 * torch.log1p(sigma).view(2, 1, 1, 1) * peak
    bias = torch.zeros(64, 77)
    bias[torch.arange(64) % 8 < 4, 3] = 1
    assert_close_across_paths(out, reference_attention(q, k, v, 2, w * bias), rtol=1e-5, why=FORMULA)


def test_dense_mode_matches_densediffusions_cross_attention_formula():
    """DenseDiffusion's update written out on the scaled scores, as their code applies it: region tokens
    pulled to the row max inside the region, every other key (and the tokens outside) pushed to the row
    min, by (1 - area of the pixel's region) * strength * t^5, and nothing once t < 0.7. Pixels in no
    named region are left alone (a deliberate difference: their code flattens attention there)."""
    masks = torch.zeros(2, 8, 8)
    masks[0, :, :4] = 1  # left half: tokens 3, 4 ("castle")
    masks[1, :2, 4:] = 1  # top-right eighth: token 7 ("sun"); the rest of the image is no region
    token_masks = torch.zeros(2, 77)
    token_masks[0, [3, 4]] = 1
    token_masks[1, 7] = 1
    times = {14.0: 0.95, 9.0: 0.8, 3.0: 0.5}
    region = regions.RegionAttention(masks, token_masks, strength=1.0, mode="dense", sigma_to_t=times.get)
    q, k, v = qkv(batch=3)
    sigma = torch.tensor([14.0, 9.0, 3.0])
    out = region.attention(q, k, v, 2, (8, 8), sigma)

    heads, d = 2, 8
    qh, kh, vh = (t.reshape(3, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    sim = qh @ kh.transpose(-1, -2) * d ** -0.5
    mask = torch.zeros(64, 77, dtype=torch.bool)
    size_reg = torch.zeros(64, 1)  # 0: no region
    for r, area in enumerate((0.5, 0.125)):
        inside = masks[r].flatten() > 0
        mask[inside] |= token_masks[r].bool()
        size_reg[inside] = 1 - area
    for b, t in enumerate(times.values()):
        treg = t ** 5 if t >= 0.7 else 0.0
        factor = size_reg * treg
        row_max, row_min = sim[b].amax(-1, keepdim=True), sim[b].amin(-1, keepdim=True)
        sim[b] = sim[b] + mask * factor * (row_max - sim[b]) - (~mask) * factor * (sim[b] - row_min)
    expected = (torch.softmax(sim, -1) @ vh).transpose(1, 2).reshape(3, 64, heads * d)
    assert_close_across_paths(out, expected, rtol=1e-5, why=FORMULA)
    plain = region.attention(q, k, v, 2, (8, 8), sigma, with_plain=True)[1]
    assert_close_across_paths(out[2], plain[2], rtol=1e-5, why=FORMULA)  # t = 0.5: past DenseDiffusion's cut-off
    assert (out[0] - plain[0]).abs().max() > 1e-2
    unnamed = (masks.sum(0).flatten() == 0)
    assert_close_across_paths(out[:, unnamed], plain[:, unnamed], rtol=1e-5, why=FORMULA)


def joint_inputs(batch=2, n_image=64, n_text=77, heads=2, dim=8, seed=3):
    """[B, heads, h*w, d] image queries and [B, heads, T, d] text keys of a joint attention."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n_image, dim, generator=gen),
            torch.randn(batch, heads, n_text, dim, generator=gen))


def test_joint_paint_with_words_offset_is_the_formula_on_the_image_text_block():
    """w(sigma) max(QK^T) M on the image-query x text-key block: the max per image over its heads, image queries and
    text keys, the same for every head; a whole multiple of the prompt length tiles the bias (docs section 6a)."""
    region = make_region(strength=0.5)
    q_image, k_text = joint_inputs(n_text=154)  # the prompt twice, as a repeated conditioning
    sigma = torch.tensor([3.0, 0.5])
    offset = region.joint_offset(q_image, k_text, (8, 8), sigma)
    peak = torch.stack([(q_image[b] @ k_text[b].transpose(-1, -2)).max().clamp_min(0) for b in range(2)])
    bias = torch.zeros(64, 154)
    bias[torch.arange(64) % 8 < 4, 3] = 1
    bias[torch.arange(64) % 8 < 4, 77 + 3] = 1
    expected = (0.5 * torch.log1p(sigma) * peak).view(2, 1, 1, 1) * bias
    assert offset.shape == (2, 1, 64, 154)
    assert_close_across_paths(offset, expected, rtol=1e-5, why=FORMULA)
    assert region.joint_offset(q_image, k_text[:, :, :100], (8, 8), sigma) is None  # not a multiple of 77
    wide = region.joint_offset(q_image[:, :, :8], k_text, (2, 4), sigma)  # a 2 x 4 token grid: left half = columns 0-1
    wide_bias = torch.zeros(8, 154)
    wide_bias[torch.arange(8) % 4 < 2, 3] = wide_bias[torch.arange(8) % 4 < 2, 80] = 1
    wide_peak = torch.stack([(q_image[b, :, :8] @ k_text[b].transpose(-1, -2)).max().clamp_min(0) for b in range(2)])
    assert_close_across_paths(wide, (0.5 * torch.log1p(sigma) * wide_peak).view(2, 1, 1, 1) * wide_bias, rtol=1e-5,
                              why=FORMULA)
    negative_peak = region.joint_offset(-q_image.abs(), k_text.abs(), (8, 8), sigma)
    assert float(negative_peak.abs().max()) == 0.0  # a negative maximum biases nothing (clamped at 0)


def test_joint_dense_offset_is_densediffusions_update_over_the_text_keys():
    masks = torch.zeros(2, 8, 8)
    masks[0, :, :4] = 1
    masks[1, :2, 4:] = 1
    token_masks = torch.zeros(2, 77)
    token_masks[0, [3, 4]] = 1
    token_masks[1, 7] = 1
    times = {14.0: 0.95, 3.0: 0.5}
    region = regions.RegionAttention(masks, token_masks, strength=1.0, mode="dense", sigma_to_t=times.get)
    q_image, k_text = joint_inputs()
    offset = region.joint_offset(q_image, k_text, (8, 8), torch.tensor([14.0, 3.0]))
    scores = q_image @ k_text.transpose(-1, -2)  # [B, heads, 64, 77]
    inside_phrase = torch.zeros(64, 77)
    size = torch.zeros(64, 1)
    for r, area in enumerate((0.5, 0.125)):
        inside = masks[r].flatten() > 0
        inside_phrase[inside] = torch.maximum(inside_phrase[inside], token_masks[r])
        size[inside] = 1 - area
    for b, t in enumerate(times.values()):
        factor = size * (t ** 5 if t >= 0.7 else 0.0)
        s = scores[b]
        expected = (inside_phrase * factor * (s.amax(-1, keepdim=True) - s)
                    - (1 - inside_phrase) * factor * (s - s.amin(-1, keepdim=True)))
        assert_close_across_paths(offset[b], expected, rtol=1e-5, why=FORMULA)
    assert float(offset[1].abs().max()) == 0.0 and float(offset[0].abs().max()) > 0.1


def test_an_image_does_not_change_with_its_batch():
    for mode in regions.MODES:
        region = make_region(mode)
        q, k, v = qkv(batch=3)
        sigma = torch.tensor([14.0, 9.0, 3.0])
        together = region.attention(q, k, v, 2, (8, 8), sigma)
        alone = torch.cat([region.attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], 2, (8, 8), sigma[i:i + 1])
                           for i in range(3)])
        assert_close_across_paths(together, alone, rtol=1e-5, why=FORMULA)


def test_bias_raises_mass_inside_only_and_tiles_repeated_prompts():
    for mode in regions.MODES:
        region = make_region(mode, strength=1.0)
        q, k, v = qkv(batch=1, n_keys=154)
        v_probe = torch.zeros_like(v)
        v_probe[:, [3, 80]] = 1  # token 3 and its copy in the repeated prompt
        inside = torch.arange(64) % 8 < 4
        sigma = torch.tensor([14.0])  # t = 0.96: inside DenseDiffusion's t >= 0.7
        mass = region.attention(q, k, v_probe, 2, (8, 8), sigma).mean(-1)[0]
        plain = region.attention(q, k, v_probe, 2, (8, 8), sigma, with_plain=True)[1].mean(-1)[0]
        assert (mass[inside] > plain[inside]).all(), mode
        assert_close_across_paths(mass[~inside], plain[~inside],
                                  rtol=1e-5, why=FORMULA)  # no named region there: untouched
    assert make_region().attention(*qkv(batch=1, n_keys=100), 2, (8, 8), torch.tensor([1.0])) is None


def test_zero_strength_and_window():
    assert make_region(strength=0.0).is_noop
    region = make_region()
    region.sigma_start, region.sigma_end = 5.0, 1.0
    assert region.active(torch.tensor([6.0, 5.0, 3.0, 1.0, 0.5])).tolist() == [False, True, True, True, False]
    with pytest.raises(ValueError, match="mode"):
        make_region(mode="nope")


# --- colour names, spec resolution edges, error messages ------------------------------------------

def test_colour_names_with_hyphens_aliases_and_no_modifier():
    spec = regions.parse_region_spec("Light-Blue: sky\nviolet: flowers\ngray: road\nred: roof\nsky blue: water")
    assert [line.name for line in spec[:4]] == [("light", "blue"), ("", "purple"), ("", "grey"), ("", "red")]
    # two words whose first is not light/dark: not a colour name, so the whole line is a bare phrase
    assert spec[4].name is None and spec[4].rgb is None and spec[4].phrase == "sky blue: water"


def test_dark_picks_the_darkest_and_light_the_lightest_of_a_family():
    colours = [(110, 170, 235), (40, 100, 170)]  # both blue
    assert regions.resolve_regions(regions.parse_region_spec("dark blue: sea"), colours) == [None, "sea"]
    assert regions.resolve_regions(regions.parse_region_spec("light blue: sky"), colours) == ["sky", None]


def test_a_hand_built_line_may_use_a_colour_alias():
    spec = [regions.SpecLine(1, "road", name=("", "gray"))]
    assert regions.resolve_regions(spec, [RED, (128, 128, 128)]) == [None, "road"]


def test_a_hex_key_takes_a_palette_colour_within_three_times_the_tolerance():
    colours = [(100, 100, 100)]
    # #ac6464 is (172, 100, 100): exactly 72 = 3 x 24 from the grey, still taken
    assert regions.resolve_regions(regions.parse_region_spec("#ac6464: stone"), colours) == ["stone"]
    with pytest.raises(ValueError, match=r"^region_spec line 1: colour #ad6464 is not in the stroke image; "
                                         r"its colours are #646464 \(grey\)$"):
        regions.resolve_regions(regions.parse_region_spec("#ad6464: stone"), colours)  # 73 away
    assert regions.resolve_regions(regions.parse_region_spec("#ad6464: stone"), colours, tolerance=25.0) == ["stone"]


def test_resolution_errors_list_the_palette_and_start_with_the_input_name():
    colours = [RED, BLUE]
    with pytest.raises(ValueError, match=r"^region_spec line 1: no region of the stroke image is green; "
                                         r"its colours are #dc281e \(red\), #285ac8 \(blue\)$"):
        regions.resolve_regions(regions.parse_region_spec("green: grass"), colours)
    with pytest.raises(ValueError, match=r"^region_spec line 1: 'blue' matches several colours "
                                         r"\(#6eaaeb, #2864aa\); write 'light blue' / 'dark blue'"):
        regions.resolve_regions(regions.parse_region_spec("blue: sea"), [(110, 170, 235), (40, 100, 170)])
    with pytest.raises(ValueError, match=r"^strokes line 2: no region of the stroke image is red; "
                                         r"its colours are none$"):
        regions.resolve_regions(regions.parse_region_spec("\nred: roof"), [], name="strokes")
    with pytest.raises(ValueError, match=r"^region_spec line 1: the stroke image has no colour regions$"):
        regions.resolve_regions(regions.parse_region_spec("#dc281e: roof"), [])
    with pytest.raises(ValueError, match=r"^region_spec: 1 phrases without a colour but only 0 colours left "
                                         r"to give them \(line 1 'castle' has none\); the stroke image's colours "
                                         r"are none$"):
        regions.resolve_regions(regions.parse_region_spec("castle"), [])


def test_palette_hex_names_each_colour():
    palette = palettes.Palette(colours=[(255, 0, 16), (1, 2, 3)], masks=torch.zeros(2, 1, 1), areas=[0.5, 0.5])
    assert palette.hex(0) == "#ff0010" and palette.hex(1) == "#010203"


# --- token positions ---------------------------------------------------------------------------------

def test_content_positions_skip_only_a_leading_start_token_and_stop_at_the_end_token():
    chunks = [[BOS, 5, 6, EOS, EOS], [7, BOS, EOS, 0, 0], [BOS, None, 8, EOS, EOS], []]
    assert regions.content_positions(chunks, BOS, EOS) == [(1, 5), (2, 6), (5, 7), (6, BOS), (11, None), (12, 8)]
    # without start/end tokens every position is content, counted across chunks
    assert regions.content_positions([[BOS, 5], [None, 6]], None, None) == [(0, BOS), (1, 5), (2, None), (3, 6)]


def test_start_and_end_tokens_are_never_phrase_tokens():
    prompt = [chunk([5, 6])]
    assert regions.phrase_token_positions(prompt, [[BOS], [EOS], [5]], BOS, EOS) == [[], [], [1]]


def test_two_regions_with_the_same_phrase_both_get_its_tokens():
    castle, tower = 10, 30
    prompt = [chunk([1, castle, tower, 2, castle])]
    spans = regions.phrase_token_positions(prompt, [[castle], [castle, tower], [castle, tower]], BOS, EOS)
    assert spans == [[5], [2, 3], [2, 3]]


def test_layer_grid_halves_even_sizes_exactly_and_returns_integers():
    for n, expected in ((32 * 48, (32, 48)), (16 * 24, (16, 24)), (5 * 5, (5, 5))):
        latent = (10, 10) if expected == (5, 5) else (64, 96)
        grid = regions.layer_grid(n, latent)
        assert grid == expected and all(type(v) is int for v in grid)  # integer arithmetic
    assert regions.layer_grid(5 * 3, (10, 6)) == (5, 3)


def test_a_window_of_a_single_level_is_closed():
    region = make_region()
    region.sigma_start, region.sigma_end = 0.0, 0.0
    assert region.active(torch.tensor([0.0, 1e-3])).tolist() == [True, False]


# Hand-computed HLS values (hue in degrees, lightness, saturation) for each colour; the families are
# [lower, upper) hue intervals: red < 15 <= orange < 45 <= yellow < 70 <= green < 165 <= cyan < 195 <= blue
# < 255 <= purple < 290 <= magenta < 345 <= red, greys when chroma < 0.12 or saturation < 0.15.
@pytest.mark.parametrize("rgb,family", [
    ((252, 63, 0), "orange"),     # hue exactly 15 (63 / 252 = 1/4 of the way to yellow)
    ((255, 66, 0), "orange"),     # 15.5
    ((252, 189, 0), "yellow"),    # exactly 45
    ((210, 255, 0), "green"),     # 70.6
    ((0, 252, 189), "cyan"),      # exactly 165
    ((0, 255, 194), "cyan"),      # 165.6
    ((0, 128, 128), "cyan"),      # 180, r is the smallest channel
    ((0, 189, 252), "blue"),      # exactly 195
    ((0, 189, 255), "blue"),      # 195.5
    ((63, 0, 252), "purple"),     # exactly 255
    ((66, 0, 255), "purple"),     # 255.5
    ((215, 0, 255), "magenta"),   # 290.6
    ((128, 0, 128), "magenta"),   # 300, g is the smallest channel
    ((240, 0, 62), "magenta"),    # 344.5
    ((252, 0, 63), "red"),        # exactly 345
    ((255, 0, 62), "red"),        # 345.4
    ((128, 128, 0), "yellow"),    # 60, b is the smallest channel
])
def test_hue_families_are_half_open_intervals(rgb, family):
    assert regions.colour_family(rgb) == family


@pytest.mark.parametrize("rgb,family", [
    ((51, 51, 51), "grey"),       # value exactly 0.2: not black
    ((50, 50, 50), "black"),
    ((60, 40, 40), "grey"),       # chroma 0.078 < 0.12 though saturation is 0.2
    ((153, 117, 117), "red"),     # chroma 0.14, saturation exactly 0.15: a colour
    ((40, 0, 0), "black"),        # saturated but value 0.16 < 0.2
    ((51, 0, 0), "brown"),        # value exactly 0.2: a colour, and dark red is brown
    ((120, 20, 20), "brown"),     # red hue, value 0.47 < 0.6, lightness 0.27 < 0.45
    ((152, 0, 0), "brown"),       # value 0.596
    ((153, 0, 0), "red"),         # value exactly 0.6: not brown
    ((200, 0, 0), "red"),         # lightness 0.39 but value 0.78
    ((150, 90, 90), "red"),       # value 0.59 but lightness 0.47
    ((255, 102, 102), "red"),     # lightness exactly 0.7: not pink
    ((255, 160, 160), "pink"),    # red hue (0), lightness 0.81
    ((255, 180, 200), "pink"),    # magenta hue (344), lightness 0.85
    ((255, 180, 255), "pink"),    # magenta hue, lightness 0.85
    ((180, 200, 255), "blue"),    # light blue stays blue
])
def test_greys_browns_and_pinks(rgb, family):
    assert regions.colour_family(rgb) == family


def test_spec_errors_name_the_default_input_and_list_the_colour_names():
    with pytest.raises(ValueError, match=r"^region_spec line 1: unknown colour 'rde'; use #RRGGBB or one of "
                                         r"red, orange, yellow, green, cyan, blue, purple, magenta, pink, brown, "
                                         r"black, white, grey \(optionally 'light'/'dark'\)$"):
        regions.parse_region_spec("rde: castle")
    with pytest.raises(ValueError, match=r"^region_spec line 2: expected '#RRGGBB: phrase', got '#castle'$"):
        regions.parse_region_spec("sky\n#castle")


def test_spec_lines_that_read_as_phrases_keep_their_line_and_the_rest_is_parsed():
    spec = regions.parse_region_spec("a castle: tall\nred: roof: tiled\nlight sky blue: x\nriver")
    assert [(line.line, line.phrase, line.name) for line in spec] == [
        (1, "a castle: tall", None), (2, "roof: tiled", ("", "red")), (3, "light sky blue: x", None),
        (4, "river", None)]
    assert regions.parse_region_spec("") == [] and regions.parse_region_spec(None) == []


# --- RegionAttention construction, weights and per-layer biases --------------------------------------

def test_region_attention_checks_its_inputs():
    with pytest.raises(ValueError, match=r"^mode must be one of \('paint_with_words', 'dense'\), got 'nope'$"):
        make_region(mode="nope")
    with pytest.raises(ValueError, match="^masks and token_masks must have one row per region$"):
        regions.RegionAttention(torch.zeros(2, 8, 8), torch.zeros(1, 77))
    region = regions.RegionAttention(torch.zeros(1, 8, 8), torch.zeros(1, 77), mode="dense")
    with pytest.raises(ValueError, match="^dense mode needs sigma_to_t$"):
        region.weight(torch.tensor([1.0]))


def test_noop_when_the_strength_is_zero_or_no_token_is_named():
    assert make_region(strength=0.0).is_noop
    assert not make_region(strength=0.1).is_noop
    assert regions.RegionAttention(torch.ones(1, 8, 8), torch.zeros(1, 77), strength=1.0).is_noop
    assert make_region(n_tokens=154).n_tokens == 154


def test_weights_follow_log_one_plus_sigma_and_densediffusions_t_to_the_fifth():
    region = make_region(strength=0.5)
    assert_close_across_paths(region.weight(torch.tensor([0.0, 1.0, 14.6, -1.0])),
                              torch.tensor([0.0, 0.5 * math.log(2.0), 0.5 * math.log(15.6), 0.0]),
                              rtol=1e-5, why=FORMULA)
    times = {10.0: 0.8, 7.0: 0.7, 6.5: 0.69}
    dense = regions.RegionAttention(torch.zeros(1, 8, 8), torch.zeros(1, 77), strength=2.0, mode="dense",
                                    sigma_to_t=times.get)
    assert_close_across_paths(dense.weight(torch.tensor([10.0, 7.0, 6.5])),
                              torch.tensor([2.0 * 0.8 ** 5, 2.0 * 0.7 ** 5, 0.0]),
                              rtol=1e-5, why=FORMULA)


def test_layer_bias_marks_region_tokens_where_the_region_is_and_its_size_factor():
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :2] = 1  # left half: area 0.5
    masks[1, :1, 2:] = 1  # top right eighth: area 0.125
    token_masks = torch.zeros(2, 5)
    token_masks[0, 1] = 1
    token_masks[1, 3] = 1
    region = regions.RegionAttention(masks, token_masks)
    bias, size = region.layer_bias(2, 2, 10, "cpu", torch.float32)
    # 2x2 layer: area-averaged masks; token rows repeated for a prompt of two chunks (10 keys)
    coverage = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 0.0]])  # [region, pixel]
    expected = torch.zeros(4, 5)
    expected[:, 1] = coverage[0]
    expected[:, 3] = coverage[1]
    assert_close_across_paths(bias, expected.repeat(1, 2), rtol=1e-5, why=FORMULA)
    assert_close_across_paths(size, (coverage.T @ torch.tensor([0.5, 0.875])).unsqueeze(1), rtol=1e-5, why=FORMULA)
    assert region.layer_bias(2, 2, 7, "cpu", torch.float32) is None  # not whole prompts


def test_masks_are_area_averaged_to_each_layer():
    masks = torch.rand(3, 8, 12, generator=torch.Generator().manual_seed(0))
    expected = masks.reshape(3, 4, 2, 4, 3).mean(dim=(2, 4))
    assert_close_across_paths(regions.resize_masks(masks, 4, 4), expected, rtol=1e-5, why=FORMULA)


def stripes(widths, colours, height=16):
    """[height, sum(widths), 3] image of vertical stripes (exact 8-bit colours)."""
    image = torch.cat([torch.tensor(c, dtype=torch.float32).expand(height, w, 3) for w, c in zip(widths, colours)],
                      dim=1)
    return image / 255


def test_palette_keeps_the_largest_regions_up_to_max_regions():
    colours = [RED, BLUE, YELLOW, GREEN]
    image = stripes([10, 30, 8, 16], colours)
    palette = palettes.extract_palette(image, max_regions=2)
    # the two widest stripes (blue 30, green 16 columns); red and yellow are nearer green, so green's region
    # starts at column 0 and comes first in reading order (integer colours)
    assert palette.colours == [GREEN, BLUE]
    assert palette.masks.shape == (2, 16, 64)
    torch.testing.assert_close(palette.masks.sum(0), torch.ones(16, 64), rtol=0, atol=0)  # exact: 0/1 partition
    assert palette.areas == pytest.approx([34 / 64, 30 / 64], rel=1e-6)


def test_palette_merges_colours_within_the_tolerance_and_drops_small_regions():
    near_red = (RED[0] - 10, RED[1] + 5, RED[2])  # 11.2 from red
    palette = palettes.extract_palette(stripes([20, 12, 32], [RED, near_red, BLUE]), tolerance=24)
    assert palette.colours == [RED, BLUE]  # the most frequent exact shade names the merged region
    assert palette.areas == pytest.approx([0.5, 0.5], rel=1e-6)
    apart = palettes.extract_palette(stripes([20, 12, 32], [RED, near_red, BLUE]), tolerance=8)
    assert apart.colours == [RED, near_red, BLUE]
    # a 1-pixel-wide line (1/64 of the image, but no interior) is not a region
    thin = palettes.extract_palette(stripes([31, 1, 32], [RED, YELLOW, BLUE]))
    assert thin.colours == [RED, BLUE]
    big_minimum = palettes.extract_palette(stripes([8, 56], [RED, BLUE]), min_area=0.2)  # red is 1/8
    assert big_minimum.colours == [BLUE]


def test_palette_shape_error_shows_the_shape():
    with pytest.raises(ValueError, match=r"^stroke image must be \[height, width, 3\], got shape \(16, 16, 4\)$"):
        palettes.extract_palette(torch.zeros(16, 16, 4))


def test_layer_bias_is_cached_per_layer_size_in_the_asked_dtype_and_device():
    region = make_region()
    small, _ = region.layer_bias(2, 2, 77, "cpu", torch.float64)
    large, size = region.layer_bias(4, 4, 77, "cpu", torch.float64)
    assert small.shape == (4, 77) and large.shape == (16, 77)
    assert large.dtype == torch.float64 and size.dtype == torch.float64
    # meta (shapes only) stands in for an accelerator
    bias, size = region.layer_bias(8, 8, 77, torch.device("meta"), torch.float32)
    assert bias.device.type == "meta" and size.device.type == "meta"


def test_paint_with_words_on_a_non_square_layer_with_small_scores():
    masks = torch.zeros(1, 4, 2)
    masks[0, :2] = 1  # top half of a 4 x 2 layer
    token_masks = torch.zeros(1, 77)
    token_masks[0, 3] = 1
    region = regions.RegionAttention(masks, token_masks, strength=0.5)
    q, k, v = (t * 0.1 for t in qkv(batch=1, n_query=8))  # every score below 1
    sigma = torch.tensor([3.0])
    out = region.attention(q, k, v, 2, (4, 2), sigma)
    scores = q.reshape(1, 8, 2, 8).transpose(1, 2) @ k.reshape(1, 77, 2, 8).transpose(1, 2).transpose(-1, -2)
    peak = scores.amax().clamp_min(0)
    assert 0 < float(peak) < 1
    bias = torch.zeros(8, 77)
    bias[:4, 3] = 1  # pixels 0..3 are the top two rows
    expected = reference_attention(q, k, v, 2, 0.5 * math.log1p(3.0) * peak * bias)
    assert_close_across_paths(out, expected, rtol=1e-5, why=FORMULA)


def test_attention_returns_the_queries_dtype():
    region = make_region()
    q, k, v = (t.half() for t in qkv(batch=1))
    out, plain = region.attention(q, k, v, 2, (8, 8), torch.tensor([2.0]), with_plain=True)
    assert out.dtype == torch.float16 and plain.dtype == torch.float16


def test_erosion_is_a_3x3_minimum_with_the_border_counted_as_inside():
    masks = (torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(0)) > 0.3).float()
    expected = torch.empty_like(masks)
    for r in range(2):
        for i in range(5):
            for j in range(6):
                rows = range(max(i - 1, 0), min(i + 2, 5))  # outside the image: the nearest pixel (inside)
                cols = range(max(j - 1, 0), min(j + 2, 6))
                expected[r, i, j] = min(float(masks[r, a, b]) for a in rows for b in cols)
    torch.testing.assert_close(palettes.erode(masks), expected, rtol=0, atol=0)  # exact: a minimum of 0/1 values


def test_palette_clamps_overshooting_images_to_the_8_bit_range():
    image = stripes([16, 16], [(255, 0, 0), (0, 0, 255)])
    image[:, :16, 0] = 1.3  # out of range values from a decoder
    image[:, 16:, 1] = -0.2
    assert palettes.extract_palette(image).colours == [(255, 0, 0), (0, 0, 255)]
