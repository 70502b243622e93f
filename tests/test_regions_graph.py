"""Stroke Regions to Words through the real PromptExecutor on the tiny models, with attention probes
inside the UNet."""
from types import SimpleNamespace

import pytest
import torch

from devkit import graphs
from devkit import harness
from devkit.tolerance import PATHS, assert_close_across_paths

# Separate runs are compared with a tolerance, never bit for bit: even the same attention call can round
# differently on another CPU (AVX2 / AVX-512 kernels, batch-dependent blocking). 1e-5 of the activations' scale
# is well above float32 rounding; a real bias moves them by more than 1e-4.


def assert_same(a, b):
    assert_close_across_paths(a, b, rtol=1e-5, why=PATHS)

PROMPT = "a castle by the river"
CASTLE = "2"  # token positions in PROMPT: BOS a castle by the river EOS
RIVER = "5"


def regions_graph(kind="sd15", pattern="square", width=64, height=64, spec="red: castle\nblue: river", **overrides):
    """ckpt 1, negative 3, stroke 5, regions node 6, latent 10."""
    prompt = graphs.base(kind)
    prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}} if kind == "sd15" \
        else prompt["3"]
    prompt["5"] = {"class_type": "GS_TestStrokePattern", "inputs": {"pattern": pattern, "width": width, "height": height}}
    inputs = {"model": ["1", 0], "clip": ["1", 1], "stroke": ["5", 0], "prompt": PROMPT, "region_spec": spec,
              "strength": 0.5, "mode": "paint_with_words", "start_percent": 0.0, "end_percent": 1.0,
              "missing_phrases": "append"}
    inputs.update(overrides)
    prompt["6"] = {"class_type": "GS_StrokeRegions", "inputs": inputs}
    graphs.empty_latent(prompt, "10", width, height)
    return prompt


def probe(prompt, node_id, key, model, tokens=CASTLE, positive=("6", 1), negative=("3", 0), sigma=6.0):
    prompt[node_id] = {"class_type": "GS_TestRegionAttentionProbe", "inputs": {
        "model": list(model), "positive": list(positive), "negative": list(negative), "latent": ["10", 0],
        "mask": ["5", 1], "tokens": tokens, "key": key, "sigma": sigma, "seed": 3}}


def ksampler(prompt, node_id, model, positive=("6", 1), steps=2):
    prompt[node_id] = {"class_type": "KSampler", "inputs": {
        "model": list(model), "seed": 11, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": list(positive), "negative": ["3", 0], "latent_image": ["10", 0], "denoise": 1.0}}
    return [node_id, 0]


@pytest.mark.parametrize("mode", ["paint_with_words", "dense"])
def test_phrase_attention_rises_inside_its_region_only_and_uncond_is_unchanged(host, captured, mode):
    prompt = regions_graph(mode=mode, strength=1.0)
    probe(prompt, "20", "patched", ("6", 0))
    probe(prompt, "21", "plain", ("1", 0))
    probe(prompt, "22", "patched_river", ("6", 0), tokens=RIVER)
    probe(prompt, "23", "plain_river", ("1", 0), tokens=RIVER)
    host.run(prompt)
    patched, plain = captured["patched_mass"], captured["plain_mass"]  # [sites, cond/uncond, in/out]
    assert patched.shape[0] == 7  # the tiny SD1 UNet's cross-attention sites, every one patched
    rise_inside = patched[:, 0, 0] - plain[:, 0, 0]
    rise_outside = patched[:, 0, 1] - plain[:, 0, 1]
    assert (rise_inside > 0).all(), rise_inside
    assert (rise_outside <= 1e-7).all(), rise_outside
    assert float(rise_inside.mean()) > (0.02 if mode == "paint_with_words" else 0.002)
    if mode == "dense":
        assert (rise_outside < 0).all()  # DenseDiffusion also pushes the phrase down outside its region
    # the river is the outside of the square: its tokens gain attention there
    river = captured["patched_river_mass"][:, 0, 1] - captured["plain_river_mass"][:, 0, 1]
    assert (river > 0).all()
    # unconditional branch: attention and prediction unchanged (to float rounding); conditional changed
    assert_same(patched[:, 1], plain[:, 1])
    assert_same(captured["patched_uncond"], captured["plain_uncond"])
    assert (captured["patched_cond"] - captured["plain_cond"]).abs().max() > 1e-4
    print(f"\n{mode}: mean attention mass on 'castle' inside its region {float(plain[:, 0, 0].mean()):.4f} -> "
          f"{float(patched[:, 0, 0].mean()):.4f}; outside {float(plain[:, 0, 1].mean()):.4f} -> "
          f"{float(patched[:, 0, 1].mean()):.4f}")


def test_sdxl_unet_and_odd_aspect_ratio(host, captured):
    # The SDXL-shaped UNet (depth, linear projections, 3-tuple keys) with random 2048-d conditioning of
    # the same 77-token layout; 72x40 pixels give a 9x5 latent and 5x3 attention layers.
    prompt = regions_graph(kind="sdxl", width=72, height=40)
    probe(prompt, "20", "patched", ("6", 0), positive=("2", 0))
    probe(prompt, "21", "plain", ("1", 0), positive=("2", 0))
    host.run(prompt)
    patched, plain = captured["patched_mass"], captured["plain_mass"]
    assert (patched[:, 0, 0] > plain[:, 0, 0]).all()
    assert (patched[:, 0, 1] <= plain[:, 0, 1] + 1e-7).all()
    assert_same(captured["patched_uncond"], captured["plain_uncond"])


@pytest.mark.parametrize("short_keys", [False, True])
def test_an_earlier_attention_replace_patch_is_still_called(host, captured, short_keys):
    probes = harness.loaded_module("gs_test_nodes.regions_probes")
    prompt = regions_graph()
    prompt["4"] = {"class_type": "GS_TestForeignAttn2", "inputs": {"model": ["1", 0], "key": "foreign", "scale": 0.5,
                                                                    "short_keys": short_keys}}
    prompt["6"]["inputs"]["model"] = ["4", 0]
    probe(prompt, "20", "both", ("6", 0))
    probe(prompt, "21", "foreign_only", ("4", 0))
    probe(prompt, "22", "ours_only", ("1", 0))
    prompt["7"] = dict(prompt["6"], inputs=dict(prompt["6"]["inputs"], model=["1", 0]))
    prompt["22"]["inputs"]["model"] = ["7", 0]
    host.run(prompt)
    # two probe runs through the foreign patch, 7 sites x (one probe + one real call) each
    assert probes.CALLS["foreign"] == 2 * 7 * 2
    # the foreign patch's effect is kept on every row, ours is added on the positive rows
    assert_same(captured["both_uncond"], captured["foreign_only_uncond"])
    assert (captured["both_cond"] - captured["foreign_only_cond"]).abs().max() > 1e-4
    assert (captured["both_cond"] - captured["ours_only_cond"]).abs().max() > 1e-4
    assert (captured["both_mass"][:, 0, 0] > captured["foreign_only_mass"][:, 0, 0]).all()


def test_strength_zero_and_empty_spec_equal_the_plain_model(host, captured):
    prompt = regions_graph(strength=0.0)
    prompt["7"] = dict(prompt["6"], inputs=dict(prompt["6"]["inputs"], strength=0.5, region_spec=""))
    prompt["8"] = dict(prompt["6"], inputs=dict(prompt["6"]["inputs"], strength=0.5))
    graphs.capture(prompt, "30", "zero", latent=ksampler(prompt, "20", ("6", 0)))
    graphs.capture(prompt, "31", "empty", latent=ksampler(prompt, "21", ("7", 0)))
    graphs.capture(prompt, "32", "plain", latent=ksampler(prompt, "22", ("1", 0)))
    graphs.capture(prompt, "33", "on", latent=ksampler(prompt, "23", ("8", 0)))
    host.run(prompt)
    assert_same(captured["zero"], captured["plain"])
    assert_same(captured["empty"], captured["plain"])
    assert (captured["on"] - captured["plain"]).abs().max() > 1e-3


def test_sigma_window_limits_the_bias(host, captured):
    prompt = regions_graph(start_percent=0.9, end_percent=1.0)  # only the last, low-noise steps
    probe(prompt, "20", "late", ("6", 0), sigma=6.0)
    probe(prompt, "21", "plain", ("1", 0), sigma=6.0)
    probe(prompt, "22", "late_low", ("6", 0), sigma=0.05)
    probe(prompt, "23", "plain_low", ("1", 0), sigma=0.05)
    host.run(prompt)
    assert_same(captured["late_cond"], captured["plain_cond"])
    assert (captured["late_low_mass"][:, 0, 0] > captured["plain_low_mass"][:, 0, 0]).all()


def test_works_with_ksampler_samplercustom_and_sdedit(host, captured):
    prompt = regions_graph()
    graphs.capture(prompt, "30", "ksampler", latent=ksampler(prompt, "20", ("6", 0)))
    sampler = graphs.ksampler_select(prompt, "21")
    sigmas = graphs.basic_scheduler(prompt, "22", 2, model=("6", 0))
    out = graphs.sampler_custom(prompt, "23", sampler, sigmas, ["10", 0], 11, model=("6", 0), positive=("6", 1))
    graphs.capture(prompt, "31", "custom", latent=out)
    prompt["24"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["1", 2]}}
    sdedit = graphs.sdedit(prompt, "25", model=["6", 0], positive=["6", 1], latent=["24", 0], steps=2)
    plain_sdedit = graphs.sdedit(prompt, "26", model=["1", 0], positive=["6", 1], latent=["24", 0], steps=2)
    graphs.capture(prompt, "32", "sdedit", latent=sdedit)
    graphs.capture(prompt, "33", "sdedit_plain", latent=plain_sdedit)
    prompt["34"] = {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0], "vae": ["1", 2]}}
    prompt["35"] = {"class_type": "SaveImage", "inputs": {"images": ["34", 0], "filename_prefix": "regions"}}
    result, _ = host.run(prompt)
    # KSampler and SamplerCustom with the same seed, steps and sampler agree
    assert_close_across_paths(captured["ksampler"], captured["custom"], rtol=1e-5, why=PATHS)
    assert (captured["sdedit"] - captured["sdedit_plain"]).abs().max() > 1e-4
    assert torch.isfinite(captured["sdedit"]).all()
    palette = result["outputs"]["6"]["gs_palette"][0]
    assert palette["colours"][0] == "#1a33cc" and palette["names"] == ["blue", "red"]
    assert palette["phrases"] == ["river", "castle"] and palette["tokens"] == [1, 1]
    assert palette["prompt"] == PROMPT and abs(sum(palette["areas"]) - 1) < 1e-3
    assert result["outputs"]["6"]["images"]  # the labelled preview on the node


def test_preview_output_and_missing_phrases_appended(host, captured):
    prompt = regions_graph(spec="#d91a1a: tall tower\nriver")
    graphs.capture(prompt, "30", "preview", image=["6", 2])
    result, _ = host.run(prompt)
    preview = captured["preview"]
    assert preview.shape == (1, 64, 64, 3)
    red, blue = torch.tensor([0.85, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.8])
    square = torch.zeros(64, 64, dtype=torch.bool)
    square[16:48, 16:48] = True
    near = lambda colour: ((preview[0] - colour).abs().amax(-1) < 0.02)  # noqa: E731
    assert near(red)[square].float().mean() > 0.3 and near(blue)[~square].float().mean() > 0.3
    assert not near(red)[~square].any() and not near(blue)[square].any()
    palette = result["outputs"]["6"]["gs_palette"][0]
    assert palette["prompt"] == PROMPT + ", tall tower"
    assert palette["phrases"] == ["river", "tall tower"] and palette["tokens"] == [1, 2]


def expect_error(host, prompt, *fragments):
    result, server = host.run(prompt, expect_success=False)
    message = host.node_error(server) or str(result.get("validation_error")) + str(result.get("node_errors"))
    for fragment in fragments:
        assert fragment in message, message


def test_bad_inputs_give_clear_errors(host, captured):
    def run_with(**overrides):
        prompt = regions_graph(**overrides)
        graphs.capture(prompt, "30", "x", image=["6", 2])
        return prompt

    # (every region_spec error is covered in test_regions_guidance.py; one shows it reaches the user)
    expect_error(host, run_with(spec="red: castle\nrde: tower"), "region_spec line 2: unknown colour 'rde'")
    expect_error(host, run_with(spec="red: sun", missing_phrases="error"), "prompt:", "'sun'", "not in the prompt")
    expect_error(host, run_with(start_percent=0.8, end_percent=0.2), "start_percent")
    prompt = run_with()
    prompt["5"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}}
    expect_error(host, prompt, "stroke: expected one painting, got a batch of 2")


# ----------------------------------------------------------------------------------------------
# Token spans with the real tokenizers


@pytest.fixture(scope="module")
def sd1_clip(host):
    clip = harness.test_nodes_module().tiny.tiny_clip(0)
    yield clip
    del clip


def spans(clip, text, phrases, missing="append"):
    regions_node = harness.loaded_module(f"{harness.PACK_NAME}.nodes.regions")
    return regions_node.token_spans(clip, text, phrases, missing)


def test_token_spans_weights_repeats_long_prompts_and_missing(sd1_clip):
    _, text, positions, length = spans(sd1_clip, "a (red castle:1.2) near a castle, ((river)), (sun:0.8)",
                                       ["castle", "river", "red castle", "sun"])
    # BOS a red castle near a castle , river , sun: 'red castle' claims 2-3, 'castle' keeps its other one
    assert positions == [[6], [8], [2, 3], [10]] and length == 77 and text.endswith("(sun:0.8)")
    long_text = ", ".join(["a green field"] * 45) + ", a castle on the hill"
    _, _, positions, length = spans(sd1_clip, long_text, ["castle", "hill"])
    assert length == 231  # three 77-token chunks
    (castle,), (hill,) = positions
    assert castle > 154 and hill == castle + 3
    _, text, positions, _ = spans(sd1_clip, "a castle", ["castle", "tall sun"])
    assert text == "a castle, tall sun" and positions == [[2], [4, 5]]
    with pytest.raises(ValueError, match=r"prompt: the phrase\(s\) 'tall sun'"):
        spans(sd1_clip, "a castle", ["castle", "tall sun"], missing="error")


def test_token_spans_agree_for_both_sdxl_text_encoders(host):
    import comfy.sdxl_clip
    tokenizer = comfy.sdxl_clip.SDXLTokenizer()
    clip = SimpleNamespace(tokenize=lambda text, **kw: tokenizer.tokenize_with_weights(text))
    assert set(clip.tokenize("x")) == {"l", "g"}
    _, _, positions, length = spans(clip, "a castle! " * 40 + "by a river", ["river", "castle !"])
    assert length == 154 and positions[0] and len(positions[1]) == 80


def test_an_unbiased_layer_is_reported_once_per_layer_not_per_call(host, captured, caplog):
    """A 154-token regions prompt, sampled with a 77-token positive (not a whole multiple): each cross-attention
    layer stays unbiased and says so once, not at every one of its 6 steps x CFG calls."""
    long_prompt = ", ".join(["a green field"] * 25) + ", a castle by the river"
    prompt = regions_graph(prompt=long_prompt, spec="red: castle\nblue: river")
    graphs.capture(prompt, "30", "x", latent=ksampler(prompt, "20", ("6", 0), positive=("2", 0), steps=6))
    host.run(prompt)
    tiny = harness.test_nodes_module().tiny.tiny_model("sd15", 0)
    layers = sum(1 for name, _ in tiny.model.diffusion_model.named_modules() if name.endswith("attn2"))
    warnings = [r for r in caplog.records if "this layer is left unbiased" in r.getMessage()]
    assert 0 < len(warnings) <= layers, (len(warnings), layers)


def test_the_preview_labels_a_region_thinner_than_its_pooling(host, captured):
    """A 512 px painting (the label finder pools it 4x4) with a 3 px wide red line at x = 202..204, so no pooled
    cell is more than half red, kept as a region (min_region_percent 0): the preview still labels it, from the
    line's own pixels."""
    prompt = graphs.base()
    prompt["5"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 512, "height": 512, "left": 0x2255CC,
                                                              "right": 0x2255CC, "batch": 1}}
    prompt["7"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 3, "height": 300}}
    prompt["8"] = {"class_type": "EmptyImage", "inputs": {"width": 3, "height": 300, "batch_size": 1,
                                                         "color": 0xD91A1A}}
    prompt["9"] = {"class_type": "ImageCompositeMasked", "inputs": {
        "destination": ["5", 0], "source": ["8", 0], "x": 202, "y": 100, "resize_source": False, "mask": ["7", 0]}}
    prompt["6"] = {"class_type": "GS_StrokeRegions", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "stroke": ["9", 0], "prompt": PROMPT, "region_spec": "red: castle",
        "strength": 0.5, "mode": "paint_with_words", "start_percent": 0.0, "end_percent": 1.0,
        "missing_phrases": "append", "colour_tolerance": 24, "min_region_percent": 0.0}}
    graphs.capture(prompt, "30", "preview", image=["6", 2])
    result, _ = host.run(prompt)
    preview = captured["preview"][0]
    assert preview.shape == (512, 512, 3)
    assert result["outputs"]["6"]["gs_palette"][0]["phrases"] == ["", "castle"]  # blue unnamed, red
    label = (preview - torch.tensor([1.0, 1.0, 1.0])).abs().amax(-1) < 0.05  # white label text (each region's)
    ys, xs = torch.nonzero(label, as_tuple=True)
    assert bool((((xs - 203).abs() < 24) & ((ys - 250).abs() < 24)).any())  # one label on the line's middle
