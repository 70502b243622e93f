"""SDEdit nodes against an independent reference (tests/oracles/reference.py).

The reference writes out the three strength semantics (README "What strength means"), ComfyUI's schedulers on
the SD1 noise table, CFG, the Euler step (= DDIM with eta 0), KSamplerX0Inpaint's re-imposition of the guide
outside the mask, repeats (run k uses seed + k) and the strength sweep.

Tolerances:
  * SIGMAS: 1e-5 relative (README "Comparing numbers in tests": no cross-path bound below 1e-5 in float32). Both sides are float32 tensors of the same levels; the host interpolates log sigma in
    float32 (percent_to_sigma) and raises a float32 ramp to the 7th power for karras (7 float32 ulps), the reference
    works in float64 (measured: 1.1e-6 at most, for karras). A wrong level is off by 1e-2 or more.
  * Trajectories: 1e-5 (atol and rtol, README "Comparing numbers in tests"); the same float32 operations on both
    sides (measured: 0). The trajectory is compared on the node's own SIGMAS (GS_SDEditSigmas) after those were
    checked against the reference, because the UNet's integer timestep is the table entry nearest in log sigma and
    a level exactly half-way between two entries (the normal scheduler puts some there) may round to either side
    with a 1e-7 change of sigma.
  * Each test also checks the comparison can fail: the reference with the targeted bug (round() for the diffusers
    start index, the same seed for every repeat, no mask, t not rescaled, ...) is far outside the tolerance.
"""
from __future__ import annotations

import pytest
import torch

from . import reference as ref
from devkit import graphs
from devkit.tolerance import ORACLE, assert_close_across_paths

from .common import base_prompt, capture, max_difference

SIGMA_RTOL = 1e-5
TRAJECTORY = dict(rtol=1e-5, why=ORACLE)
CFG = 5.0
SEMANTICS = ("paper", "diffusers", "comfy")


def guide(prompt, batch=1):
    """A 64x64 two-colour painting (a second, different one for batch 2) encoded by the tiny VAE: node 11."""
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    image = ["10", 0]
    if batch == 2:
        prompt["8"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0x33AA44,
                                                                  "right": 0xEEDD22, "batch": 1}}
        prompt["9"] = {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["8", 0]}}
        image = ["9", 0]
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": image, "vae": ["1", 2]}}
    capture(prompt, "12", "guide", latent=["11", 0])
    return ["11", 0]


def sdedit(prompt, node_id, key, latent, **overrides):
    graphs.sdedit(prompt, node_id, **{"seed": 5, "steps": 7, "cfg": CFG, "scheduler": "ddim_uniform",
                                      "strength": 0.55, "latent": latent, **overrides})
    capture(prompt, node_id + "c", key, latent=[node_id, 0])
    return prompt[node_id]["inputs"]


def sigmas_node(prompt, node_id, key, scheduler, steps, strength, semantics):
    prompt[node_id] = {"class_type": "GS_SDEditSigmas", "inputs": {"model": ["1", 0], "scheduler": scheduler,
                                                                    "steps": steps, "strength": strength,
                                                                    "semantics": semantics}}
    capture(prompt, node_id + "c", key, sigmas=[node_id, 0])


def check_sigmas(node, expected, what):
    assert len(node) == len(expected), f"{what}: {len(node) - 1} steps, the reference runs {len(expected) - 1}"
    assert_close_across_paths(node, expected, rtol=SIGMA_RTOL, why=ORACLE,
                              what=f"{what}: node {node.tolist()} reference {expected.tolist()}")


# (scheduler, steps, strength): 7 x 0.55 = 3.85 and 8 x 0.45 = 3.6 are not whole numbers, so int() and round()
# disagree there. ddim_uniform starts below t = 1 (t = 981 / 999 at 50 steps, 995 / 999 at 7, 997 / 999 at 12); at
# 7 and 12 steps it builds one level more than asked: all three semantics count from the asked-for steps there
# (test_ddim_uniform_at_any_step_count_equals_the_ksampler_nodes).
SCHEDULES = [("ddim_uniform", 50, 0.8), ("normal", 8, 0.45), ("karras", 7, 0.55), ("simple", 9, 0.3),
             ("normal", 6, 1.0), ("karras", 5, 0.99995)]
EXTRA_LEVEL = [("ddim_uniform", 7, 0.55), ("ddim_uniform", 12, 0.3)]


def test_sdedit_sigmas_follow_the_three_definitions(host, store, tiny):
    prompt = base_prompt()
    cases = [(sem, *schedule) for sem in SEMANTICS for schedule in SCHEDULES]
    cases += [(sem, *schedule) for sem in SEMANTICS for schedule in EXTRA_LEVEL]
    for n, case in enumerate(cases):
        sigmas_node(prompt, f"2{n:02d}", f"s{n}", case[1], case[2], case[3], case[0])
    host.run(prompt)
    for n, (semantics, scheduler, steps, strength) in enumerate(cases):
        expected = ref.sdedit_sigmas(tiny.schedule, scheduler, steps, strength, semantics)
        check_sigmas(store[f"s{n}"], expected, f"{semantics} {scheduler} {steps} steps strength {strength}")

    # the comparison can fail on the bugs it targets
    full = tiny.schedule.scheduler("karras", 7)
    rounded = full[7 - round(7 * 0.55):]  # diffusers start with round(): 3 instead of 4
    diffusers = store[f"s{cases.index(('diffusers', 'karras', 7, 0.55))}"]
    assert len(rounded) != len(diffusers) and len(diffusers) == int(7 * 0.55) + 1
    paper = store[f"s{cases.index(('paper', 'ddim_uniform', 7, 0.55))}"]
    unscaled = torch.tensor([tiny.schedule.time_to_sigma(tiny.schedule.sigma_to_time(float(s)) * 0.55)
                             for s in tiny.schedule.scheduler("ddim_uniform", 7)[:-1]] + [0.0])
    assert float(((paper[1:-1] - unscaled[1:-1]) / paper[1:-1]).abs().max()) > 1e-3, \
        "t not rescaled by t0 / t_first would pass"
    assert tiny.schedule.sigma_to_time(float(tiny.schedule.scheduler("ddim_uniform", 7)[0])) < 0.999


def test_the_oracle_schedule_is_the_models(tiny):
    """The reference's own SD1 table (scaled-linear betas) is the tiny model's: the premise of every oracle here."""
    table = tiny.model.model.model_sampling.sigmas
    # two computations of the same table (exp/log kernels may differ in the last bit between CPUs): float rounding
    assert_close_across_paths(table, tiny.schedule.table.float(), rtol=1e-5, why=ORACLE)
    assert tiny.model.model.latent_format.scale_factor == ref.SD1_LATENT_SCALE


def sampling_cases():
    cases = []
    for semantics in SEMANTICS:
        for scheduler, steps, strength in [("karras", 7, 0.55), ("normal", 8, 0.45)]:
            cases.append(dict(semantics=semantics, scheduler=scheduler, steps=steps, strength=strength))
    cases.append(dict(semantics="paper", scheduler="ddim_uniform", steps=7, strength=0.55))  # starts below t = 1
    cases.append(dict(semantics="paper", scheduler="ddim_uniform", steps=7, strength=0.55, sampler_name="ddim"))
    cases.append(dict(semantics="paper", scheduler="normal", steps=6, strength=1.0))  # from sigma_max: VP noise
    return cases


def test_sdedit_sampler_matches_the_euler_cfg_reference(host, store, tiny, denoiser):
    prompt = base_prompt()
    latent = guide(prompt)
    cases = sampling_cases()
    for n, case in enumerate(cases):
        sdedit(prompt, f"2{n:02d}", f"out{n}", latent, **case)
        sigmas_node(prompt, f"4{n:02d}", f"sig{n}", case["scheduler"], case["steps"], case["strength"],
                    case["semantics"])
    host.run(prompt)
    d = denoiser(CFG)
    for n, case in enumerate(cases):
        expected_sigmas = ref.sdedit_sigmas(tiny.schedule, case["scheduler"], case["steps"], case["strength"],
                                            case["semantics"])
        check_sigmas(store[f"sig{n}"], expected_sigmas, str(case))
        expected = ref.sdedit(d, store["guide"], store[f"sig{n}"], 5, tiny.schedule.sigma_max)
        assert_close_across_paths(store[f"out{n}"], expected, **TRAJECTORY, what=str(case))
        assert max_difference(expected, store["guide"]) > 1.0  # it really sampled
    # the wrong start index (round instead of int) lands far away
    n = cases.index(dict(semantics="diffusers", scheduler="karras", steps=7, strength=0.55))
    wrong = tiny.schedule.scheduler("karras", 7)[7 - round(7 * 0.55):]
    assert max_difference(ref.sdedit(d, store["guide"], wrong, 5, tiny.schedule.sigma_max), store[f"out{n}"]) > 0.1


def test_repeats_use_seed_plus_k_on_the_previous_result(host, store, tiny, denoiser):
    prompt = base_prompt()
    latent = guide(prompt)
    sdedit(prompt, "20", "repeated", latent, repeats=3, seed=9, semantics="comfy", scheduler="karras")
    sigmas_node(prompt, "21", "sigmas", "karras", 7, 0.55, "comfy")
    host.run(prompt)
    d = denoiser(CFG)
    x = store["guide"]
    same_seed = store["guide"]
    for k in range(3):
        x = ref.sdedit(d, x, store["sigmas"], 9 + k, tiny.schedule.sigma_max)
        same_seed = ref.sdedit(d, same_seed, store["sigmas"], 9, tiny.schedule.sigma_max)
    assert_close_across_paths(store["repeated"], x, **TRAJECTORY, what="3 repeats")
    assert max_difference(same_seed, store["repeated"]) > 0.1  # one seed for every repeat would be caught


def test_mask_reimposes_the_guide_outside_it_at_every_step(host, store, tiny, denoiser):
    """1 = regenerate. The mask is 1 on pixel columns 0-27 of 64: at the 8-pixel latent grid, bilinear gives
    columns 0-2 = 1, column 3 = 0.5 (a soft edge), columns 4-7 = 0."""
    prompt = base_prompt()
    latent = guide(prompt)
    prompt["13"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    prompt["14"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 28, "height": 64}}
    prompt["15"] = {"class_type": "MaskComposite", "inputs": {"destination": ["13", 0], "source": ["14", 0],
                                                              "x": 0, "y": 0, "operation": "add"}}
    sdedit(prompt, "20", "masked", latent, strength=0.9, scheduler="karras")
    prompt["20"]["inputs"]["mask"] = ["15", 0]
    sigmas_node(prompt, "21", "sigmas", "karras", 7, 0.9, "paper")
    host.run(prompt)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :28] = 1.0
    m = ref.latent_mask(mask, store["guide"].shape)
    assert m[0, 0, 0].tolist() == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]
    d = denoiser(CFG)
    expected = ref.sdedit(d, store["guide"], store["sigmas"], 5, tiny.schedule.sigma_max, mask=m)
    assert_close_across_paths(store["masked"], expected, **TRAJECTORY, what="masked SDEdit")
    assert_close_across_paths(store["masked"][..., 4:], store["guide"][..., 4:], **TRAJECTORY, what="outside the mask")
    assert max_difference(store["masked"][..., :3], store["guide"][..., :3]) > 1.0
    hard = ref.sdedit(d, store["guide"], store["sigmas"], 5, tiny.schedule.sigma_max, mask=(m > 0.75).float())
    assert max_difference(hard, store["masked"]) > 0.1  # a soft edge treated as hard would be caught
    unmasked = ref.sdedit(d, store["guide"], store["sigmas"], 5, tiny.schedule.sigma_max)
    assert max_difference(unmasked, store["masked"]) > 1.0


def test_strength_sweep_is_one_run_per_strength_with_the_same_seed(host, store, tiny, denoiser):
    prompt = base_prompt()
    latent = guide(prompt, batch=2)
    sdedit(prompt, "20", "sweep", latent, strength_sweep="0.3, 0.55;0.8", semantics="diffusers", scheduler="karras",
           steps=7)
    for n, strength in enumerate((0.3, 0.55, 0.8)):
        sigmas_node(prompt, f"3{n}", f"sig{n}", "karras", 7, strength, "diffusers")
    host.run(prompt)
    d = denoiser(CFG)
    assert store["guide"].shape[0] == 2 and store["sweep"].shape[0] == 6
    for n, strength in enumerate((0.3, 0.55, 0.8)):
        check_sigmas(store[f"sig{n}"], ref.sdedit_sigmas(tiny.schedule, "karras", 7, strength, "diffusers"),
                     f"sweep entry {strength}")
        expected = ref.sdedit(d, store["guide"], store[f"sig{n}"], 5, tiny.schedule.sigma_max)
        assert_close_across_paths(store["sweep"][2 * n:2 * n + 2], expected, **TRAJECTORY, what=f"sweep entry {strength}")


# ----------------------------------------------------------------------------------------------
# Against ComfyUI's own nodes: comfy = KSampler denoise, diffusers = KSamplerAdvanced start_at_step


def ksampler(prompt, node_id, key, latent, steps, scheduler, seed, denoise):
    prompt[node_id] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": latent, "seed": seed,
        "steps": steps, "cfg": CFG, "sampler_name": "euler", "scheduler": scheduler, "denoise": denoise}}
    capture(prompt, node_id + "c", key, latent=[node_id, 0])


def ksampler_advanced(prompt, node_id, key, latent, steps, scheduler, seed, start):
    graphs.ksampler_advanced(prompt, node_id, latent, steps, seed, start=start, scheduler=scheduler, cfg=CFG)
    capture(prompt, node_id + "c", key, latent=[node_id, 0])


@pytest.mark.parametrize("scheduler, steps, strength", [("normal", 8, 0.45), ("karras", 7, 0.55)])
def test_comfy_is_ksampler_denoise_and_diffusers_is_ksampler_advanced(host, store, scheduler, steps, strength):
    prompt = base_prompt()
    latent = guide(prompt)
    sdedit(prompt, "20", "comfy", latent, semantics="comfy", scheduler=scheduler, steps=steps, strength=strength)
    sdedit(prompt, "21", "diffusers", latent, semantics="diffusers", scheduler=scheduler, steps=steps,
           strength=strength)
    ksampler(prompt, "30", "ksampler", latent, steps, scheduler, 5, strength)
    start = steps - int(steps * strength)
    ksampler_advanced(prompt, "31", "advanced", latent, steps, scheduler, 5, start)
    ksampler_advanced(prompt, "32", "advanced_wrong", latent, steps, scheduler, 5, steps - round(steps * strength))
    ksampler(prompt, "33", "ksampler_wrong", latent, steps, scheduler, 5, round(strength + 0.1, 2))
    host.run(prompt)
    assert_close_across_paths(store["comfy"], store["ksampler"], **TRAJECTORY, what="comfy vs KSampler denoise")
    assert_close_across_paths(store["diffusers"], store["advanced"], **TRAJECTORY, what="diffusers vs KSamplerAdvanced")
    # each comparison can fail: another start index or denoise is far outside the tolerance
    assert start != steps - round(steps * strength)
    assert max_difference(store["diffusers"], store["advanced_wrong"]) > 0.1
    assert max_difference(store["comfy"], store["ksampler_wrong"]) > 0.1
    assert max_difference(store["comfy"], store["diffusers"]) > 0.1


# A bug this test found: guidance/sdedit.select_sigmas took N from the length of the built schedule instead of
# the node's `steps`. ComfyUI's ddim_uniform builds one level more than asked whenever (1000 // steps) * steps < 999
# (7 steps -> 8 levels), so diffusers (7 steps, 0.3) ran 2 steps where KSamplerAdvanced(start_at_step 5) runs 3,
# and comfy (7 steps, 0.55) kept 9 sigmas of a 14-step schedule where KSampler(denoise 0.55) keeps 8 of 12.
# The node now counts from the asked-for steps, as the KSampler nodes do.
@pytest.mark.parametrize("semantics, strength", [("diffusers", 0.3), ("comfy", 0.55)])
def test_ddim_uniform_at_any_step_count_equals_the_ksampler_nodes(host, store, tiny, semantics, strength):
    steps = 7
    prompt = base_prompt()
    latent = guide(prompt)
    sdedit(prompt, "20", "ours", latent, semantics=semantics, scheduler="ddim_uniform", steps=steps,
           strength=strength)
    sigmas_node(prompt, "21", "sigmas", "ddim_uniform", steps, strength, semantics)
    if semantics == "diffusers":
        ksampler_advanced(prompt, "31", "ksampler", latent, steps, "ddim_uniform", 5, steps - int(steps * strength))
    else:
        ksampler(prompt, "31", "ksampler", latent, steps, "ddim_uniform", 5, strength)
    host.run(prompt)
    assert_close_across_paths(store["ours"], store["ksampler"], **TRAJECTORY, what=f"{semantics} vs the KSampler node")
    check_sigmas(store["sigmas"], ref.sdedit_sigmas(tiny.schedule, "ddim_uniform", steps, strength, semantics),
                 f"{semantics} ddim_uniform {steps} steps {strength}")
