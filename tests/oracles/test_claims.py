"""README and tooltip claims that no other test backed (tests/oracles/CLAIMS.md lists every claim and its test).

Each test derives its expectation from the stated value (the README's numbers, the documented constants) or from
the independent reference in tests/oracles/reference.py, never from the pack's own code. Two tests call pack
functions as the *subject* (painting-function constants at 512/1024 px, where a run through the node would cost
minutes); the expected side is still the reference.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from devkit import graphs
from devkit import harness

from . import reference as ref
from devkit.tolerance import ORACLE, PATHS, assert_close_across_paths

from .common import base_prompt, capture, max_difference
from .test_gradop_oracle import add_gradop, check, logged, oracle

# ----------------------------------------------------------------------------------------------
# Documented defaults and ranges (README tables, tooltips)

DOCUMENTED = {
    "GS_SDEdit": {"semantics": "paper", "repeats": 1, "sampler_name": "euler", "strength_sweep": ""},
    "GS_GradOPPlus": {"steps": 50, "cfg": 7.5, "sampler_name": "euler", "scheduler": "ddim_uniform", "strength": 0.8,
                      "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
                      "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full",
                      "mode": "GradOP+", "gamma": 0.001, "width": 0, "height": 0, "batch_size": 1,
                      "decoder_memory": "auto"},
    "GS_GradOPPlusSampler": {"sampler_name": "euler", "strength": 0.8, "iterative_steps": 3, "grad_steps": 12,
                             "learning_rate": 0.1, "painting_function": "gaussian blur", "decoder": "auto",
                             "mode": "GradOP+", "gamma": 0.001, "decoder_memory": "auto"},
    "GS_StrokeRegions": {"strength": 0.4, "mode": "paint_with_words", "start_percent": 0.0, "end_percent": 1.0,
                         "missing_phrases": "append", "colour_tolerance": 24, "min_region_percent": 0.2},
}
OPTIONS = {
    ("GS_SDEdit", "semantics"): ["paper", "diffusers", "comfy"],
    ("GS_GradOPPlus", "painting_function"): ["gaussian blur", "median", "median + palette"],
    ("GS_GradOPPlus", "decoder"): ["auto", "fp32", "bf16", "fp16", "taesd"],
    ("GS_GradOPPlus", "loss_resolution"): ["full", "half"],
    ("GS_GradOPPlus", "mode"): ["GradOP+", "GradOP (reconstruction)"],
    ("GS_GradOPPlus", "decoder_memory"): ["auto", "full", "checkpointed"],
    ("GS_StrokeRegions", "mode"): ["paint_with_words", "dense"],
    ("GS_StrokeRegions", "missing_phrases"): ["append", "error"],
}


def input_specs(host, node):
    spec = host.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
    return {name: value[1] if len(value) > 1 else {} for section in ("required", "optional")
            for name, value in spec.get(section, {}).items()}


def test_documented_defaults_options_and_ranges(host):
    for node, defaults in DOCUMENTED.items():
        specs = input_specs(host, node)
        for name, value in defaults.items():
            assert specs[name].get("default") == value, f"{node}.{name}: default {specs[name].get('default')!r}, " \
                                                        f"documented {value!r}"
    for (node, name), options in OPTIONS.items():
        assert input_specs(host, node)[name]["options"] == options, (node, name)
    for node in ("GS_SDEdit", "GS_GradOPPlus"):  # seeds: the whole 64-bit range, like KSampler's
        assert input_specs(host, node)["seed"]["max"] == 2 ** 64 - 1
    assert input_specs(host, "GS_SDEdit")["strength"]["min"] > 0 and input_specs(host, "GS_SDEdit")["strength"]["max"] == 1


# ----------------------------------------------------------------------------------------------
# Numbers printed in README / docs/methods/sdedit.md section 3


SD1_LEVELS = {999: (14.615, 0.0683), 981: (13.120, 0.0760), 781: (4.692, 0.2085), 761: (4.298, 0.2266),
              741: (3.946, 0.2457), 1: (0.0413, 0.9991), 0: (0.0292, 0.9996)}
# (semantics, scheduler, strength) -> (first sigma, ~t, steps that run) for 50 steps on SD1
START_LEVELS = {
    ("paper", "ddim_uniform", 0.8): (5.092, 799, 50),
    ("diffusers", "ddim_uniform", 0.8): (4.692, 781, 40),
    ("comfy", "ddim_uniform", 0.8): (4.776, 785, 50),
    ("comfy", "normal", 0.8): (5.169, 802, 50),
    ("comfy", "karras", 0.8): (6.176, 840, 50),
    ("comfy", "simple", 0.8): (5.254, 806, 50),
    ("comfy", "normal", 0.5): (1.589, 494, 50),
    ("comfy", "karras", 0.5): (1.237, 418, 50),
    ("comfy", "ddim_uniform", 0.5): (1.570, 491, 50),
    ("comfy", "simple", 0.5): (1.613, 499, 50),
    ("paper", "normal", 1.0): (14.615, 999, 50),
    ("paper", "karras", 1.0): (14.615, 999, 50),
}


def test_sd1_levels_and_sdedit_start_levels_printed_in_the_docs(host, store, tiny):
    table = tiny.model.model.model_sampling.sigmas.double()
    for t, (sigma, sqrt_alpha_bar) in SD1_LEVELS.items():
        assert float(table[t]) == pytest.approx(sigma, abs=5e-4 if sigma > 1 else 5e-5), t
        assert 1 / math.sqrt(1 + float(table[t]) ** 2) == pytest.approx(sqrt_alpha_bar, abs=5e-5), t
    prompt = base_prompt()
    for n, (semantics, scheduler, strength) in enumerate(START_LEVELS):
        prompt[f"2{n:02d}"] = {"class_type": "GS_SDEditSigmas", "inputs": {
            "model": ["1", 0], "scheduler": scheduler, "steps": 50, "strength": strength, "semantics": semantics}}
        capture(prompt, f"3{n:02d}", f"s{n}", sigmas=[f"2{n:02d}", 0])
    # KSamplerAdvanced start_at_step 10 of 50 ddim_uniform steps starts where diffusers 0.8 does
    graphs.basic_scheduler(prompt, "90", 50, "ddim_uniform")
    prompt["91"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["90", 0], "step": 10}}
    capture(prompt, "92", "advanced", sigmas=["91", 1])
    host.run(prompt)
    for n, (key, (sigma, t, steps)) in enumerate(START_LEVELS.items()):
        sigmas = store[f"s{n}"]
        assert float(sigmas[0]) == pytest.approx(sigma, abs=5e-4), (key, float(sigmas[0]))
        assert round(tiny.schedule.sigma_to_time(float(sigmas[0])) * 999) == t, key
        assert len(sigmas) - 1 == steps, key
    assert float(store["advanced"][0]) == pytest.approx(4.692, abs=5e-4)


def test_gradop_optimises_at_the_documented_levels(host, tiny, caplog):
    """README: with 50 ddim_uniform steps at 0.8 the optimisations run at t = 781, 761, 741 (9, not 10, sampler
    steps first); docs: at 0.7 the window starts at t = 661 while SDEdit(0.7, diffusers) starts at t = 681."""
    caplog.set_level("INFO")
    prompt = base_prompt()
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    add_gradop(prompt, "20", "s08", ["10", 0], steps=50, grad_steps=1)
    host.run(prompt)
    table = tiny.schedule.table
    assert [entry[2] for entry in logged(caplog)] == pytest.approx([float(table[t]) for t in (781, 761, 741)],
                                                                     abs=6e-5)
    caplog.clear()
    prompt["20"]["inputs"]["strength"] = 0.7
    prompt["30"] = {"class_type": "GS_SDEditSigmas", "inputs": {"model": ["1", 0], "scheduler": "ddim_uniform",
                                                                 "steps": 50, "strength": 0.7, "semantics": "diffusers"}}
    capture(prompt, "31", "sdedit07", sigmas=["30", 0])
    host.run(prompt)
    assert [entry[2] for entry in logged(caplog)] == pytest.approx([float(table[t]) for t in (661, 641, 621)],
                                                                     abs=6e-5)
    store = harness.test_nodes_module().CAPTURED
    assert float(store["sdedit07"][0]) == pytest.approx(float(table[681]), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Inputs: greyscale is repeated, RGBA drops alpha, strokes are resized to the output size


def test_greyscale_is_repeated_and_rgba_drops_alpha_in_every_node(host, store):
    prompt = base_prompt(clip=True)
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    prompt["11"] = {"class_type": "ImageToMask", "inputs": {"image": ["10", 0], "channel": "green"}}
    prompt["12"] = {"class_type": "MaskToImage", "inputs": {"mask": ["11", 0]}}  # grey, as 3 equal channels
    prompt["13"] = {"class_type": "GS_TestImageChannels", "inputs": {"image": ["12", 0], "channels": 1}}  # 1 channel
    prompt["14"] = {"class_type": "GS_TestImageChannels", "inputs": {"image": ["10", 0], "channels": 4}}  # RGBA
    images = {"rgb": ["10", 0], "grey3": ["12", 0], "grey1": ["13", 0], "rgba": ["14", 0]}
    for n, (name, image) in enumerate(images.items()):
        add_gradop(prompt, f"2{n}", f"gradop_{name}", image, grad_steps=1, iterative_steps=1)
        graphs.sdedit(prompt, f"3{n}", seed=5, steps=4, scheduler="karras", image=image, vae=["1", 2])
        capture(prompt, f"4{n}", f"sdedit_{name}", latent=[f"3{n}", 0])
        prompt[f"5{n}"] = {"class_type": "GS_StrokeRegions", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "stroke": image, "prompt": "a castle by the river", "region_spec": "",
            "strength": 0.4, "mode": "paint_with_words", "start_percent": 0.0, "end_percent": 1.0,
            "missing_phrases": "append"}}
        capture(prompt, f"6{n}", f"preview_{name}", image=[f"5{n}", 2])
    result, _ = host.run(prompt)
    palettes = {name: result["outputs"][f"5{n}"]["gs_palette"][0]["colours"] for n, name in enumerate(images)}
    for a, b in (("rgb", "rgba"), ("grey3", "grey1")):
        assert_close_across_paths(store[f"gradop_{a}"], store[f"gradop_{b}"], rtol=1e-5, why=PATHS,
                                  what=f"GradOP+ {a} vs {b}")
        assert_close_across_paths(store[f"sdedit_{a}"], store[f"sdedit_{b}"], rtol=1e-5, why=PATHS,
                                  what=f"SDEdit {a} vs {b}")
        assert palettes[a] == palettes[b]
    assert palettes["grey1"] == ["#333333", "#555555"]  # the green channel of #cc3322 / #2255cc, repeated
    assert max_difference(store["gradop_rgb"], store["gradop_grey3"]) > 1e-3  # the comparison can fail


def test_gradop_strokes_are_resized_to_the_output_size(host, store, tiny, denoiser, caplog):
    """Strokes of another size are resized to the output: area averaging when shrinking, bilinear when enlarging
    (docs/methods/gradop.md section 3.7), with a log line; width/height 0 take the strokes' size rounded down to
    a multiple of 8."""
    caplog.set_level("WARNING")
    prompt = base_prompt()
    sizes = {"shrink": (64, 48, 32, 24), "enlarge": (16, 16, 32, 32), "rounded": (44, 36, 0, 0)}
    for n, (key, (w, h, out_w, out_h)) in enumerate(sizes.items()):
        prompt[f"1{n}"] = {"class_type": "GS_TestStrokes", "inputs": {"width": w, "height": h, "left": 0xCC3322,
                                                                      "right": 0x2255CC, "batch": 1}}
        capture(prompt, f"1{n}9", f"strokes_{key}", image=[f"1{n}", 0])
        add_gradop(prompt, f"2{n}", key, [f"1{n}", 0], grad_steps=1 if key != "rounded" else 0,
                   iterative_steps=1, width=out_w, height=out_h)
    host.run(prompt)
    assert store["rounded"].shape == (1, 4, 4, 5)  # 44 x 36 -> 40 x 32 pixels
    messages = " ".join(r.getMessage() for r in caplog.records)
    for text in ("64x48 to 32x24", "16x16 to 32x32", "44x36 to 40x32"):
        assert f"strokes resized from {text}" in messages
    for key, mode in (("shrink", "area"), ("enlarge", "bilinear")):
        w, h, out_w, out_h = sizes[key]
        strokes = store[f"strokes_{key}"].movedim(-1, 1)
        target = F.interpolate(strokes, size=(out_h, out_w), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        result = oracle(tiny, denoiser, target, (1, 4, out_h // 8, out_w // 8), grad_steps=1, iterative_steps=1)
        check(result, store[key], store[key + "_images"], f"strokes {w}x{h} -> {out_w}x{out_h}")


# ----------------------------------------------------------------------------------------------
# "No UNet gradient is taken"; samplers other than euler/ddim; progress


def test_no_unet_gradient_is_taken(host, store):
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.taesd.taesd as taesd
    unet_calls, decoder_calls = [], []

    def hook(module, args, output):
        if isinstance(module, openaimodel.UNetModel):
            unet_calls.append(torch.is_grad_enabled())
        elif isinstance(module, taesd.Block):
            decoder_calls.append(torch.is_grad_enabled())

    prompt = base_prompt()
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    add_gradop(prompt, "20", "plus", ["10", 0], grad_steps=2)
    add_gradop(prompt, "21", "reconstruction", ["10", 0], grad_steps=2, mode="GradOP (reconstruction)")
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        host.run(prompt)
    finally:
        handle.remove()
    assert len(unet_calls) >= 8 + (8 + 8 - 2) and not any(unet_calls)  # every UNet call without autograd
    assert any(decoder_calls)  # while the decoder copy does run under autograd


def ksampler_advanced(prompt, node_id, latent, sampler, seed, start, end, add_noise, leftover):
    return graphs.ksampler_advanced(prompt, node_id, latent, 8, seed, start=start, end=end, sampler=sampler,
                                    scheduler="ddim_uniform", add_noise=add_noise, leftover=leftover)


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m"])
def test_samplers_restart_per_segment_with_a_fresh_noise_stream(host, store, sampler):
    """README: samplers other than euler/ddim restart their history at each optimisation (multistep) or draw a
    fresh noise stream per segment (ancestral: seed + segment). With grad_steps 0 the segments remain, so the node
    must equal KSamplerAdvanced run segment by segment (8 ddim_uniform steps, optimisation levels 2, 3, 4 at 0.8)
    with noise_seed 7, 8, 9, 10."""
    prompt = base_prompt()
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    add_gradop(prompt, "20", "node", ["10", 0], grad_steps=0, sampler_name=sampler)
    graphs.empty_latent(prompt, "30", 32, 32)
    bounds = [0, 2, 3, 4, 10000]
    for variant, seeds in (("fresh", [7, 8, 9, 10]), ("same", [7, 7, 7, 7])):
        latent = ["30", 0]
        for s, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            latent = ksampler_advanced(prompt, f"4{s}{variant[0]}", latent, sampler, seeds[s], start, end,
                                       add_noise=s == 0, leftover=end != 10000)
        capture(prompt, f"5{variant[0]}", variant, latent=latent)
    whole = ksampler_advanced(prompt, "60", ["30", 0], sampler, 7, 0, 10000, True, False)
    capture(prompt, "61", "whole", latent=whole)
    host.run(prompt)
    assert_close_across_paths(store["node"], store["fresh"], rtol=1e-5, why=PATHS, what=f"{sampler}: node vs segments")
    assert max_difference(store["node"], store["whole"]) > 1e-3  # the split is visible: history restarted
    if sampler == "euler_ancestral":
        assert max_difference(store["node"], store["same"]) > 1e-3  # one noise stream reused would be caught


def test_progress_counts_sampler_and_adam_steps(host):
    prompt = base_prompt()
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    add_gradop(prompt, "20", "plus", ["10", 0], grad_steps=2)  # 8 sampler + 3 x 2 Adam steps
    add_gradop(prompt, "21", "reconstruction", ["10", 0], grad_steps=2, mode="GradOP (reconstruction)")
    prompt["30"] = {"class_type": "GS_GradOPPlusSampler", "inputs": {
        "sampler_name": "euler", "vae": ["1", 2], "strokes": ["10", 0], "strength": 0.8, "iterative_steps": 3,
        "grad_steps": 2, "learning_rate": 0.1, "painting_function": "gaussian blur", "decoder": "auto",
        "loss_resolution": "full", "mode": "GradOP+", "gamma": 0.001}}
    latent = graphs.empty_latent(prompt, "31")
    sigmas = graphs.basic_scheduler(prompt, "32", 8, "ddim_uniform")
    capture(prompt, "34", "custom", latent=graphs.sampler_custom(prompt, "33", ["30", 0], sigmas, latent, 7))
    events = harness.run_recording_progress(host, prompt)

    def final(node, total):
        values = [value for n, value, t in events if n == node and t == total]
        return max(values) if values else None

    assert final("20", 8 + 3 * 2) == 14
    assert final("21", 8 + (8 - 2) + 2) == 16  # text sample, then sampling from level 2, plus the Adam steps
    assert final("33", 8 + 3 * 2) == 14  # the SAMPLER form's bar, under SamplerCustom


# ----------------------------------------------------------------------------------------------
# Stroke Regions to Words


def regions_prompt(mode="paint_with_words", strength=1.0):
    prompt = base_prompt(clip=True)
    prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    prompt["5"] = {"class_type": "GS_TestStrokePattern", "inputs": {"pattern": "square", "width": 64, "height": 64}}
    prompt["6"] = {"class_type": "GS_StrokeRegions", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "stroke": ["5", 0], "prompt": "a castle by the river",
        "region_spec": "red: castle\nblue: river", "strength": strength, "mode": mode, "start_percent": 0.0,
        "end_percent": 1.0, "missing_phrases": "append"}}
    graphs.empty_latent(prompt, "10", 64, 64)
    return prompt


def mass_probe(prompt, node_id, key, model, sigma=6.0, positive=("6", 1)):
    prompt[node_id] = {"class_type": "GS_TestRegionAttentionProbe", "inputs": {
        "model": list(model), "positive": list(positive), "negative": ["3", 0], "latent": ["10", 0],
        "mask": ["5", 1], "tokens": "2", "key": key, "sigma": sigma, "seed": 3}}


def test_regions_returns_a_clone_and_leaves_the_input_model_unchanged(host):
    def fingerprint(with_regions):
        prompt = regions_prompt()
        prompt["20"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["1", 2]}}
        prompt["21"] = {"class_type": "GS_TestFingerprint", "inputs": {"model": ["1", 0], "vae": ["1", 2],
                                                                       "latent": ["20", 0]}}
        if with_regions:
            prompt["21"]["inputs"]["after"] = ["6", 0]
            prompt["22"] = {"class_type": "GS_TestFingerprint", "inputs": {"model": ["6", 0], "vae": ["1", 2],
                                                                           "latent": ["20", 0]}}
        result, _ = host.run(prompt)
        return (result["outputs"]["21"]["gs_fingerprint"][0],
                result["outputs"].get("22", {}).get("gs_fingerprint", [None])[0])

    before, _ = fingerprint(False)
    after, patched = fingerprint(True)
    assert after == before  # the input model: same weights, same model_options
    assert patched["model"] == before["model"]  # the output shares the weights (a clone)...
    assert "patches_replace" in patched["model_options_keys"]  # ...and carries the attn2 patches
    assert "patches_replace" not in before["model_options_keys"]


def test_dense_bias_acts_only_while_t_is_at_least_0_7(host, store, tiny):
    """README: dense lambda = strength * t^5 while t >= 0.7 (DenseDiffusion's first 30 % of steps), 0 after."""
    prompt = regions_prompt(mode="dense")
    levels = {"above": 0.705, "below": 0.695}
    for n, (name, t) in enumerate(levels.items()):
        sigma = tiny.schedule.time_to_sigma(t)
        mass_probe(prompt, f"2{n}", f"dense_{name}", ("6", 0), sigma=sigma)
        mass_probe(prompt, f"3{n}", f"plain_{name}", ("1", 0), sigma=sigma)
    host.run(prompt)
    assert max_difference(store["dense_above_cond"], store["plain_above_cond"]) > 1e-4
    # the patched attention with a zero bias vs the plain one: another code path (measured up to 5.3e-6 on values
    # of about 6 on an AVX-512 CPU, 2 ulps there), while a bias that stays on moves them by more than 1e-4
    assert_close_across_paths(store["dense_below_cond"], store["plain_below_cond"], rtol=1e-5, why=PATHS,
                              what="dense at t < 0.7")


def test_attention_masses_measured_in_the_readme(host, store):
    """README: inside the tiny UNet (sigma 6, strength 1) the mass on 'castle' inside its region goes 0.019 -> 0.91
    with paint_with_words while it falls outside (0.018 -> 0.001); dense 0.019 -> 0.031 inside, 0.018 -> 0.017
    outside."""
    printed = {"paint_with_words": ((0.019, 0.91), (0.018, 0.001)), "dense": ((0.019, 0.031), (0.018, 0.017))}
    prompt = regions_prompt()
    prompt["7"] = dict(prompt["6"], inputs=dict(prompt["6"]["inputs"], mode="dense"))
    mass_probe(prompt, "20", "pww", ("6", 0))
    mass_probe(prompt, "21", "dense", ("7", 0))
    mass_probe(prompt, "22", "plain", ("1", 0))
    host.run(prompt)
    plain = store["plain_mass"][:, 0].mean(0)  # mean over sites of the conditional rows: [inside, outside]
    for mode, key in (("paint_with_words", "pww"), ("dense", "dense")):
        patched = store[f"{key}_mass"][:, 0].mean(0)
        (inside_before, inside_after), (outside_before, outside_after) = printed[mode]
        half_unit = lambda printed_value: 0.5 * 10 ** -len(f"{printed_value}".split(".")[1]) + 1e-5  # noqa: E731
        assert abs(float(plain[0]) - inside_before) <= half_unit(inside_before), (mode, float(plain[0]))
        assert abs(float(patched[0]) - inside_after) <= half_unit(inside_after), (mode, float(patched[0]))
        assert abs(float(plain[1]) - outside_before) <= half_unit(outside_before), (mode, float(plain[1]))
        assert abs(float(patched[1]) - outside_after) <= half_unit(outside_after), (mode, float(patched[1]))


# ----------------------------------------------------------------------------------------------
# Constants of the painting functions and of the decoder-size check


def pack_gradop():
    return harness.loaded_module(f"{harness.PACK_NAME}.guidance.gradop")


@pytest.mark.parametrize("size, kernel, sigma", [(512, 35, 7.0), (1024, 69, 14.0)])
def test_blur_is_kernel_35_sigma_7_at_512_px_scaled_with_the_image(host, size, kernel, sigma):
    """The node's blur for a size x size image, applied to a small image (the sizing comes from the size
    argument), equals the reference Gaussian with the README's kernel and sigma."""
    image = torch.rand(1, 3, 2 * kernel + 8, 2 * kernel + 6, generator=torch.Generator().manual_seed(0))
    ours = pack_gradop().painting_function("gaussian blur", size, size)(image)
    assert_close_across_paths(ours, ref.gaussian_blur(image, kernel, sigma), rtol=1e-5, why=ORACLE)
    assert max_difference(ours, ref.gaussian_blur(image, kernel - 2, sigma)) > 1e-4
    assert max_difference(ours, ref.gaussian_blur(image, kernel, sigma * 0.9)) > 1e-4


def test_median_is_kernel_15_at_512_px(host):
    image = torch.rand(1, 3, 24, 26, generator=torch.Generator().manual_seed(1))
    ours = pack_gradop().painting_function("median", 512, 512)(image)
    torch.testing.assert_close(ours, ref.median(image, 15), rtol=0, atol=0)  # exact: a median selects an input
    assert max_difference(ours, ref.median(image, 13)) > 1e-3
    big = torch.rand(1, 3, 36, 36, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(pack_gradop().painting_function("median", 1024, 1024)(big), ref.median(big, 29),
                               rtol=0, atol=0)  # exact: a median selects an input


def test_palette_is_the_exact_painted_colours_of_at_least_0_2_percent_with_temperature_0_01(host):
    """docs/methods/gradop.md: 'median + palette' snaps to the stroke colours as Stroke Regions to Words finds them
    (exact painted shades; specks under 0.2 % dropped); softmax over squared RGB distance, temperature 0.01.
    Image 0: five colour blocks on a background and a 2x2 speck (4 px < 0.2 % of 4096 = 8.2, dropped);
    image 1: three vertical stripes."""
    grid = [0, 85, 170, 255]  # colours at least 85 apart: far beyond the regions' tolerance of 24

    def colour(k):
        return torch.tensor([grid[k % 4], grid[(k // 4) % 4], grid[(k // 16) % 4]], dtype=torch.float32) / 255.0

    target = torch.zeros(2, 3, 64, 64)
    target[0] = colour(21)[:, None, None]
    for k in range(5):
        top, left = 16 * (k // 3) + 4, 20 * (k % 3) + 2
        target[0, :, top:top + 14, left:left + 14] = colour(k + 1)[:, None, None]
    target[0, :, 60:62, 60:62] = colour(42)[:, None, None]
    for k in range(3):
        target[1, :, :, 22 * k:22 * (k + 1)] = colour(50 + 3 * k)[:, None, None]
    assert len(ref.stroke_palette(target[0])) == 6 and len(ref.stroke_palette(target[1])) == 3
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = pack_gradop().painting_function("median + palette", 64, 64, target)(image)
    expected = ref.painting_function("median + palette", 64, 64, target)(image)
    # 2e-3: the node computes squared distances as cdist(p, c)^2, whose float32 matrix-product form
    # |p|^2 + |c|^2 - 2 p.c loses ~1e-6 of d^2, which the temperature 0.01 multiplies by 100 inside exp()
    # (measured 6e-4); any other constant moves outputs by 0.01 or more (checked below)
    print(f"palette: max |node - reference| {max_difference(ours, expected):.2e}")
    assert_close_across_paths(ours, expected, rtol=2e-3, why=ORACLE)  # colours in [0, 1]: 2e-3 absolute as well
    with_speck = torch.cat([ref.stroke_palette(target[0]), colour(42)[None]])
    variants = {
        "temperature 0.02": [ref.soft_palette(m, ref.stroke_palette(t), temperature=0.02)
                             for m, t in zip(ref.median(image, 3), target)],
        "specks kept": [ref.soft_palette(m, p) for m, p in zip(ref.median(image, 3),
                                                                 [with_speck, ref.stroke_palette(target[1])])],
        "binned colours": [ref.soft_palette(m, (ref.stroke_palette(t) * 31).round() / 31)
                           for m, t in zip(ref.median(image, 3), target)],
    }
    for name, variant in variants.items():
        gap = max_difference(ours, torch.stack(variant))
        print(f"palette with {name}: {gap:.2e} away")
        assert gap > 1e-2, name


@pytest.mark.parametrize("decoder, bits", [("auto", 32), ("bf16", 16)])
def test_decoder_fit_estimate_is_7200_bytes_per_pixel_in_fp32_half_in_16_bit(host, decoder, bits):
    """README 'Errors and limits': a GradOP+ output that cannot fit stops before the first step with the estimate
    (about 7,200 bytes per output pixel in fp32, half in 16-bit) and the largest size of the same shape that fits."""
    width = height = 4096
    prompt = base_prompt()
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    add_gradop(prompt, "20", "big", ["10", 0], decoder=decoder, grad_steps=1, width=width, height=height)
    _, server = host.run(prompt, expect_success=False)
    message = host.node_error(server)
    needed = 7200 * bits / 32 * width * height
    assert f"needs about {needed / 2 ** 30:.1f} GiB" in message, message
    free = float(re.search(r"reports ([\d.]+) GiB free", message).group(1)) * 2 ** 30
    fits = re.search(r"about (\d+)x(\d+) pixels", message)
    side = int(width * math.sqrt(free / needed))
    assert fits and abs(int(fits.group(1)) - side) <= 16 and fits.group(1) == fits.group(2), message


def test_every_test_named_in_claims_md_exists():
    """CLAIMS.md points at tests by `t/file.py::name` (or `::name` after one in the same cell); each must exist,
    so a renamed or deleted test cannot leave a claim pointing at nothing."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    text = (root / "oracles" / "CLAIMS.md").read_text()
    missing, current = [], None
    for token in re.findall(r"`([^`]+)`", text):
        match = re.fullmatch(r"([to])/([\w/]+\.py)(?:::(\w+))?", token)
        if match:
            current = root / ("oracles" if match.group(1) == "o" else "") / match.group(2)
            name = match.group(3)
        elif token.startswith("::") and current is not None:
            name = token[2:].split("[")[0]
        else:
            continue
        if not current.exists():
            missing.append(str(current))
        elif name and not re.search(rf"^(async )?def {name}\(", current.read_text(), re.M):
            missing.append(f"{current.name}::{name}")
    assert not missing, missing
