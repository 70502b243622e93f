"""SDEdit nodes through the real PromptExecutor on tiny models."""
import math

import pytest
import torch

from devkit import graphs
from devkit.tolerance import BATCH, PATHS, assert_close_across_paths


def guide_latent(prompt, batch=1):
    image = graphs.solid_image(prompt, "10", width=64, height=64, batch=batch, color=0x3366CC)
    return graphs.encode(prompt, "11", image)


def run_capture(host, captured, prompt, key="out"):
    host.run(prompt)
    return captured[key]


@pytest.mark.parametrize("sampler,scheduler,batch", [("euler", "ddim_uniform", 1), ("dpmpp_2m", "karras", 2)])
def test_diffusers_semantics_matches_ksampler_advanced(host, captured, sampler, scheduler, batch):
    steps, strength, seed = 10, 0.8, 123
    prompt = graphs.base()
    latent = guide_latent(prompt, batch)
    ours = graphs.sdedit(prompt, "20", latent=latent, steps=steps, strength=strength, semantics="diffusers",
                         seed=seed, sampler_name=sampler, scheduler=scheduler)
    reference = graphs.ksampler_advanced(prompt, "21", latent, steps, seed, start=steps - int(steps * strength),
                                         sampler=sampler, scheduler=scheduler)
    graphs.capture(prompt, "30", "ours", latent=ours)
    graphs.capture(prompt, "31", "reference", latent=reference)
    graphs.capture(prompt, "32", "guide", latent=latent)
    host.run(prompt)
    assert captured["ours"].shape == (batch, 4, 8, 8)
    assert (captured["ours"] - captured["guide"]).abs().max() > 1e-2  # it really sampled
    assert_close_across_paths(captured["ours"], captured["reference"], rtol=1e-5, why=PATHS)


def test_masked_edit_preserves_the_unmasked_area(host, captured):
    prompt = graphs.base()
    latent = guide_latent(prompt)
    prompt["12"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    prompt["13"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}}
    prompt["14"] = {"class_type": "MaskComposite", "inputs": {"destination": ["12", 0], "source": ["13", 0],
                                                              "x": 0, "y": 0, "operation": "add"}}
    edited = graphs.sdedit(prompt, "20", latent=latent, mask=["14", 0], strength=0.9)
    graphs.capture(prompt, "30", "edited", latent=edited)
    graphs.capture(prompt, "31", "guide", latent=latent)
    host.run(prompt)
    edited, guide = captured["edited"], captured["guide"]
    # Latent columns 0-3 lie under mask = 1, columns 4-7 under mask = 0.
    assert_close_across_paths(edited[..., 5:], guide[..., 5:], rtol=1e-5, why=PATHS)
    assert (edited[..., :3] - guide[..., :3]).abs().mean() > 0.05


def test_image_input_matches_latent_input(host, captured):
    prompt = graphs.base()
    image = graphs.solid_image(prompt, "10")
    latent = graphs.encode(prompt, "11", image)
    from_image = graphs.sdedit(prompt, "20", image=image, vae=["1", 2])
    from_latent = graphs.sdedit(prompt, "21", latent=latent)
    graphs.capture(prompt, "30", "a", latent=from_image)
    graphs.capture(prompt, "31", "b", latent=from_latent)
    host.run(prompt)
    assert_close_across_paths(captured["a"], captured["b"], rtol=1e-5, why=PATHS)  # VAE Encode in the node / before


def test_seed_reproducible_and_seed_sensitive(host, captured):
    prompt = graphs.base()
    latent = guide_latent(prompt)
    graphs.capture(prompt, "30", "a", latent=graphs.sdedit(prompt, "20", latent=latent, seed=5))
    graphs.capture(prompt, "31", "b", latent=graphs.sdedit(prompt, "21", latent=latent, seed=5, cfg=5.0001))
    graphs.capture(prompt, "32", "c", latent=graphs.sdedit(prompt, "22", latent=latent, seed=6))
    host.run(prompt)
    # cfg 5 vs 5.0001 (2e-5 relative): the same seed gives the same result up to that tiny change, far below 1e-3
    assert_close_across_paths(captured["a"], captured["b"], rtol=1e-3, why="the same seed; cfg differs by 2e-5")
    assert (captured["a"] - captured["c"]).abs().max() > 1e-2


def test_repeats_chain_sdedit_with_the_next_seed(host, captured):
    prompt = graphs.base()
    latent = guide_latent(prompt)
    twice = graphs.sdedit(prompt, "20", latent=latent, seed=9, repeats=2)
    first = graphs.sdedit(prompt, "21", latent=latent, seed=9)
    second = graphs.sdedit(prompt, "22", latent=first, seed=10)
    graphs.capture(prompt, "30", "twice", latent=twice)
    graphs.capture(prompt, "31", "chained", latent=second)
    graphs.capture(prompt, "32", "once", latent=first)
    host.run(prompt)
    assert_close_across_paths(captured["twice"], captured["chained"], rtol=1e-5, why=PATHS)
    assert (captured["twice"] - captured["once"]).abs().max() > 1e-3


def test_one_progress_bar_counts_every_repeat_and_every_strength(host, captured):
    """One bar per node over all its runs: 2 repeats x 2 strengths of paper semantics at 6 steps (6 sampler
    steps each) end at 24 of 24 and never go back (each run continues where the previous one stopped)."""
    from devkit import harness
    prompt = graphs.base()
    latent = guide_latent(prompt)
    graphs.capture(prompt, "30", "x", latent=graphs.sdedit(prompt, "20", latent=latent, repeats=2,
                                                          strength_sweep="0.4, 0.8"))
    events = [(value, total) for node, value, total in harness.run_recording_progress(host, prompt) if node == "20"]
    assert {total for _, total in events} == {24}
    values = [value for value, _ in events]
    assert values[-1] == 24 and values == sorted(values), values


def test_strength_sweep_is_a_batch_of_single_runs(host, captured):
    prompt = graphs.base()
    latent = guide_latent(prompt, batch=2)
    sweep = graphs.sdedit(prompt, "20", latent=latent, strength_sweep="0.3, 0.7")
    graphs.capture(prompt, "30", "sweep", latent=sweep)
    graphs.capture(prompt, "31", "s03", latent=graphs.sdedit(prompt, "21", latent=latent, strength=0.3))
    graphs.capture(prompt, "32", "s07", latent=graphs.sdedit(prompt, "22", latent=latent, strength=0.7))
    host.run(prompt)
    assert captured["sweep"].shape[0] == 4
    assert_close_across_paths(captured["sweep"][:2], captured["s03"], rtol=1e-5, why=BATCH)
    assert_close_across_paths(captured["sweep"][2:], captured["s07"], rtol=1e-5, why=BATCH)


@pytest.mark.parametrize("kind", ["sd2_v", "sdxl"])
def test_other_model_families(host, captured, kind):
    """v-prediction (SD2) and SDXL: the comfy semantics is ComfyUI's KSampler with denoise = strength and the
    diffusers one KSamplerAdvanced from step steps - int(steps * strength), on the same model and seed (the
    independent expectation: ComfyUI's own nodes); paper semantics starts elsewhere."""
    prompt = graphs.base(kind)
    graphs.empty_latent(prompt, "10", 64, 64, batch=2)
    common = dict(latent=["10", 0], strength=0.7, sampler_name="dpmpp_2m", scheduler="karras", seed=7, steps=6)
    for semantics in ("paper", "comfy", "diffusers"):
        graphs.capture(prompt, f"3{semantics}", semantics,
                       latent=graphs.sdedit(prompt, f"2{semantics}", semantics=semantics, **common))
    sampler = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["10", 0],
               "steps": 6, "cfg": 5.0, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    prompt["40"] = {"class_type": "KSampler", "inputs": dict(sampler, seed=7, denoise=0.7)}
    graphs.ksampler_advanced(prompt, "41", ["10", 0], 6, 7, start=6 - int(6 * 0.7), sampler="dpmpp_2m",
                             scheduler="karras")
    graphs.capture(prompt, "40c", "ksampler", latent=["40", 0])
    graphs.capture(prompt, "41c", "advanced", latent=["41", 0])
    host.run(prompt)
    assert captured["paper"].shape == (2, 4, 8, 8) and torch.isfinite(captured["paper"]).all()
    assert_close_across_paths(captured["comfy"], captured["ksampler"], rtol=1e-5, why=PATHS)  # vs KSampler denoise
    assert_close_across_paths(captured["diffusers"], captured["advanced"], rtol=1e-5, why=PATHS)
    scale = float(captured["ksampler"].abs().max())
    assert float((captured["comfy"] - captured["diffusers"]).abs().max()) > 1e-2 * scale  # the comparisons can fail
    assert float((captured["paper"] - captured["comfy"]).abs().max()) > 1e-2 * scale


def sigmas_for(host, captured, semantics, strength, scheduler="ddim_uniform", steps=50):
    prompt = graphs.base()
    prompt["20"] = {"class_type": "GS_SDEditSigmas", "inputs": {"model": ["1", 0], "scheduler": scheduler,
                                                                 "steps": steps, "strength": strength,
                                                                 "semantics": semantics}}
    graphs.capture(prompt, "30", "sigmas", sigmas=["20", 0])
    host.run(prompt)
    return captured["sigmas"]


def test_sigmas_node_reference_values(host, captured):
    # docs/methods/sdedit.md section 3: diffusers DDIM s=0.8 starts at t=781, sigma 4.692, and runs 40 steps;
    # the paper's t0=0.8 starts at percent_to_sigma(0.2) = 5.092 and runs all 50.
    diffusers = sigmas_for(host, captured, "diffusers", 0.8)
    assert len(diffusers) == 41 and math.isclose(float(diffusers[0]), 4.692, abs_tol=2e-3)  # abs: docs print 3 decimals
    paper = sigmas_for(host, captured, "paper", 0.8)
    assert len(paper) == 51 and math.isclose(float(paper[0]), 5.092, abs_tol=2e-3)  # abs: docs print 3 decimals
    comfy = sigmas_for(host, captured, "comfy", 0.8)
    assert len(comfy) == 51 and math.isclose(float(comfy[0]), 4.776, abs_tol=2e-3)  # abs: docs print 3 decimals
    full = sigmas_for(host, captured, "paper", 1.0, scheduler="normal")
    assert math.isclose(float(full[0]), 14.6146, abs_tol=1e-3)  # abs: sigma_max printed to 4 decimals


def test_sigmas_node_monotonic_in_strength(host, captured):
    starts = [float(sigmas_for(host, captured, "paper", s, scheduler="karras", steps=8)[0])
              for s in (0.01, 0.25, 0.5, 0.75, 1.0)]
    assert all(a < b for a, b in zip(starts, starts[1:]))
    assert starts[0] < 0.15 and math.isclose(starts[-1], 14.6146, abs_tol=1e-3)  # abs: printed to 4 decimals


def expect_error(host, prompt, *fragments):
    result, server = host.run(prompt, expect_success=False)
    message = host.node_error(server) or str(result.get("validation_error")) + str(result.get("node_errors"))
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_bad_inputs_give_clear_errors(host, captured):
    prompt = graphs.base()
    latent = guide_latent(prompt)
    graphs.capture(prompt, "30", "x", latent=graphs.sdedit(prompt, "20", latent=latent, strength_sweep=" , "))
    expect_error(host, prompt, "strength_sweep has no strengths")

    prompt = graphs.base()
    latent = guide_latent(prompt)
    graphs.capture(prompt, "30", "x", latent=graphs.sdedit(prompt, "20", latent=latent, strength=0.0))
    expect_error(host, prompt, "strength")

    prompt = graphs.base()
    image = graphs.solid_image(prompt, "10")
    prompt["12"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}}
    graphs.capture(prompt, "30", "x", latent=graphs.sdedit(prompt, "20", image=image, vae=["1", 2], mask=["12", 0]))
    expect_error(host, prompt, "mask is 64x32 (HxW) but image is 64x64")

    prompt = graphs.base()
    image = graphs.solid_image(prompt, "10")
    graphs.capture(prompt, "30", "x", latent=graphs.sdedit(prompt, "20", image=image))
    expect_error(host, prompt, "'image' needs a 'vae'")

    prompt = graphs.base()
    graphs.capture(prompt, "30", "x", latent=graphs.sdedit(prompt, "20"))
    expect_error(host, prompt, "connect a guide")


def test_a_latent_guide_takes_one_mask_per_image_and_names_a_wrong_batch(host, captured):
    """With a latent guide of batch 2: a mask batch of 2 masks each image on its own (image 0 fully, image 1
    not at all); a mask batch of 3 is an error naming the mask and the latent batch."""
    prompt = graphs.base()
    latent = guide_latent(prompt, batch=2)
    prompt["12"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt["13"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    prompt["14"] = {"class_type": "GS_TestMaskBatch", "inputs": {"first": ["12", 0], "second": ["13", 0]}}
    graphs.capture(prompt, "30", "edited", latent=graphs.sdedit(prompt, "20", latent=latent, mask=["14", 0],
                                                                strength=0.9))
    graphs.capture(prompt, "31", "guide", latent=latent)
    host.run(prompt)
    edited, guide = captured["edited"], captured["guide"]
    assert float((edited[0] - guide[0]).abs().mean()) > 0.05
    assert_close_across_paths(edited[1], guide[1], rtol=1e-5, why=PATHS)

    prompt = graphs.base()
    latent = guide_latent(prompt, batch=2)
    prompt["12"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt["14"] = {"class_type": "GS_TestMaskBatch", "inputs": {"first": ["12", 0], "second": ["12", 0],
                                                                 "third": ["12", 0]}}
    graphs.capture(prompt, "30", "x", latent=graphs.sdedit(prompt, "20", latent=latent, mask=["14", 0]))
    expect_error(host, prompt, "mask has a batch of 3; expected 1 or 2")


def test_a_latent_without_samples_is_refused(host):
    """The guide check itself (no executor can deliver such a LATENT): a dict without 'samples' is refused."""
    from devkit import harness
    sdedit = harness.loaded_module(f"{harness.PACK_NAME}.nodes.sdedit")
    with pytest.raises(ValueError, match="'latent' must be a LATENT"):
        sdedit._guide_latent(None, None, {"noise_mask": torch.ones(1, 1, 8, 8)}, None)
    with pytest.raises(ValueError, match="'latent' must be a LATENT"):
        sdedit._guide_latent(None, None, torch.zeros(1, 4, 8, 8), None)
