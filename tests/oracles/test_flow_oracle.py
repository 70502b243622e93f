"""SDEdit and GradOP+ on flow transformers (tiny Flux.1 dev and SD3.5) against plain-torch references
(tests/oracles/flow_reference.py), through the real executor; and the flow <-> VP-equivalent mapping GradOP+ works
in, against finite differences, the model's own noise_scaling and many noise draws.

Flux.1 dev runs as people run it: cfg 1 (one conditional branch) with FluxGuidance (the distilled guidance value,
4.0 here, not the model's 3.5 default, so a lost guidance input shows). SD3.5 runs with CFG 3, Flux.1 schnell with
cfg 1, Chroma with CFG 3 and Z-Image with CFG 2. (Qwen-Image's Wan VAE gives video-shaped latents: not here.)

Tolerances:
  * SIGMAS: 1e-5 relative. The node maps each level to t through a table interpolated in log sigma
    (guidance/schedules.tabulated_inverse), the reference inverts the shift in closed form: measured 1.4e-6 at
    most (Flux's smallest level of the normal schedule; before the table was refined below t = 0.05 this test
    found it 6 % off there, and SD3.5's 1.2e-4). A wrong level (no shift, another scheduler) is off by 1e-2 or more.
  * Trajectories: the same float32 operations on both sides (networks, Euler, CFG) on the node's own SIGMAS,
    after those were checked: 1e-5 of the largest value (README "Comparing numbers in tests"). The variants ruled
    out (VE noising, no shift, one seed for all repeats, no mask) land 1e-2 or more away.
  * GradOP+: as tests/oracles/test_gradop_oracle.py explains, Adam's sign-like first steps make float32 rounding
    near a clamp bound a whole-lr difference, so runs use 1 Adam step per iteration (2 iterations) or 3 steps in
    one. Latents: 1e-4 of the largest value. Measured 7e-7 at most on every family but one: one element of
    Flux.1 schnell's 2-iteration run, whose gradient sits near Adam's eps (1e-8), where the step g / (|g| + eps)
    is steepest, came out 6e-6 away, and 1.4e-5 with oneDNN off and denormals flushed (GS_PERTURB). The wrong
    flow formulas land 0.4 or more away. Decoded images: 1e-4.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from devkit import harness
from devkit.tolerance import FORMULA, ORACLE, assert_close_across_paths

from . import flow_reference as fref
from .common import capture, max_difference
from .reference import Margins, latent_mask

SIGMA_RTOL = 1e-5
TRAJECTORY = dict(rtol=1e-5, why=ORACLE)
LATENT_RTOL = 1e-4
IMAGE_RTOL = 1e-4
POSITIVE, NEGATIVE = "a castle on a hill", ""
# kind -> (cfg, FluxGuidance value or None)
SETTINGS = {"flux_dev": (1.0, 4.0), "sd35": (3.0, None), "flux_schnell": (1.0, None), "chroma": (3.0, None),
            "z_image": (2.0, None)}
KINDS = list(SETTINGS)
SEED = 5


@pytest.fixture(scope="module")
def flow(host):
    """The tiny flow networks, VAE decoder and text conditionings, rebuilt in this process from the seeds the
    GS_TestTinyFlowCheckpoint node uses (the executor's copies are never touched)."""
    nodes = harness.test_nodes_module()
    clip = nodes.tiny.tiny_clip(0)

    def encode(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return cond.float(), pooled.float()

    cache = {}

    def get(kind):
        if kind not in cache:
            net = nodes.tiny_flow.tiny_flow_model(kind, 0).model.diffusion_model
            net.requires_grad_(False)
            decoder = nodes.tiny_flow.tiny_flow_vae(0).first_stage_model
            decoder.requires_grad_(False)
            decoder.eval()
            cfg, guidance = SETTINGS[kind]
            schedule = fref.FlowSchedule(kind)
            denoiser = fref.FlowDenoiser(net, schedule, encode(POSITIVE), encode(NEGATIVE), cfg, guidance)
            cache[kind] = SimpleNamespace(net=net, decoder=decoder, schedule=schedule, denoiser=denoiser)
        return cache[kind]
    return get


@pytest.fixture
def store(host):
    captured = harness.test_nodes_module().CAPTURED
    captured.clear()
    return captured


def base_prompt(kind: str) -> dict:
    """Node 1: the tiny checkpoint; 2: positive (Flux: through FluxGuidance), 3: negative."""
    cfg, guidance = SETTINGS[kind]
    prompt = {
        "1": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": {"kind": kind, "seed": 0}},
        "2t": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["1", 1]}},
    }
    if guidance is None:
        prompt["2"] = prompt.pop("2t")
    else:
        prompt["2"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2t", 0], "guidance": guidance}}
    return prompt


def guide(prompt) -> list:
    """A 64x64 two-colour painting encoded by the tiny 16-channel VAE (captured raw as 'guide')."""
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["1", 2]}}
    capture(prompt, "12", "guide", latent=["11", 0])
    return ["11", 0]


def sigmas_node(prompt, node_id, key, scheduler, steps, strength, semantics):
    prompt[node_id] = {"class_type": "GS_SDEditSigmas", "inputs": {"model": ["1", 0], "scheduler": scheduler,
                                                                    "steps": steps, "strength": strength,
                                                                    "semantics": semantics}}
    capture(prompt, node_id + "c", key, sigmas=[node_id, 0])


def sdedit_node(prompt, node_id, key, kind, latent, **overrides):
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "seed": SEED, "steps": 4,
              "cfg": SETTINGS[kind][0], "sampler_name": "euler", "scheduler": "simple", "strength": 0.6,
              "semantics": "paper", "repeats": 1, "strength_sweep": "", "latent": latent, **overrides}
    prompt[node_id] = {"class_type": "GS_SDEdit", "inputs": inputs}
    capture(prompt, node_id + "c", key, latent=[node_id, 0])
    return inputs


def check_sigmas(node, expected, what):
    assert len(node) == len(expected), f"{what}: {len(node) - 1} steps, the reference runs {len(expected) - 1}"
    assert_close_across_paths(node, expected, rtol=SIGMA_RTOL, why=ORACLE,
                              what=f"{what}: node {node.tolist()} reference {expected.tolist()}")


# ----------------------------------------------------------------------------------------------
# SDEdit


SIGMA_CASES = [(sem, sched, steps, strength) for sem in ("paper", "diffusers", "comfy")
               for sched, steps, strength in (("simple", 8, 0.45), ("normal", 7, 0.55), ("simple", 4, 1.0))]


def test_flow_schedule_reference_is_the_models(flow, host):
    """The premise: the reference's closed-form shifted schedules are the tiny models' own tables."""
    nodes = harness.test_nodes_module()
    for kind in KINDS:
        sampling = nodes.tiny_flow.tiny_flow_model(kind, 0).model.model_sampling
        schedule = flow(kind).schedule
        table = torch.tensor([schedule.sigma(k / schedule.T) for k in range(1, schedule.T + 1)])
        assert_close_across_paths(sampling.sigmas.double(), table, rtol=1e-5, why=FORMULA, what=kind)
        for t in (0.2, 0.6, 0.95):
            assert abs(schedule.time(schedule.sigma(t)) - t) < 1e-12
        # the shift is real (Flux.1 schnell has none): sigma(t) is far from t
        assert abs(schedule.sigma(0.5) - 0.5) > 0.1 or kind == "flux_schnell"


@pytest.mark.parametrize("kind", KINDS)
def test_sdedit_sigmas_on_shifted_flow_schedules(host, store, flow, kind):
    prompt = base_prompt(kind)
    for n, (semantics, scheduler, steps, strength) in enumerate(SIGMA_CASES):
        sigmas_node(prompt, f"2{n:02d}", f"s{n}", scheduler, steps, strength, semantics)
    host.run(prompt)
    schedule = flow(kind).schedule
    for n, case in enumerate(SIGMA_CASES):
        expected = fref.sdedit_sigmas(schedule, case[1], case[2], case[3], case[0])
        check_sigmas(store[f"s{n}"], expected, f"{kind} {case}")
    # paper starts at the shifted sigma(t0), not at t0: the unshifted reading is far outside the tolerance
    paper = store[f"s{SIGMA_CASES.index(('paper', 'simple', 8, 0.45))}"]
    assert abs(float(paper[0]) - 0.45) / 0.45 > 1e-2 or kind == "flux_schnell"


@pytest.mark.parametrize("kind", KINDS)
def test_sdedit_on_flow_matches_the_reference(host, store, flow, kind):
    """Each semantics on the simple schedule, the normal schedule, a mask (soft edge), two repeats and strength 1;
    the start latent is the flow marginal (1 - sigma0) z0 + sigma0 eps."""
    prompt = base_prompt(kind)
    latent = guide(prompt)
    prompt["13"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    prompt["14"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 28, "height": 64}}
    prompt["15"] = {"class_type": "MaskComposite", "inputs": {"destination": ["13", 0], "source": ["14", 0],
                                                              "x": 0, "y": 0, "operation": "add"}}
    cases = {f"{sem}": dict(semantics=sem) for sem in ("paper", "diffusers", "comfy")}
    cases["normal"] = dict(semantics="paper", scheduler="normal", steps=3, strength=0.7)
    cases["masked"] = dict(semantics="paper", strength=0.9)
    cases["repeats"] = dict(semantics="comfy", repeats=2, seed=9)
    cases["full"] = dict(semantics="paper", strength=1.0, steps=3)
    for n, (key, case) in enumerate(cases.items()):
        inputs = sdedit_node(prompt, f"3{n}", key, kind, latent, **case)
        if key == "masked":
            inputs["mask"] = ["15", 0]
        sigmas_node(prompt, f"4{n}", f"sig_{key}", inputs["scheduler"], inputs["steps"], inputs["strength"],
                    inputs["semantics"])
    host.run(prompt)
    f = flow(kind)
    g = store["guide"]
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :28] = 1.0
    m = latent_mask(mask, g.shape)
    for key, case in cases.items():
        full = {"scheduler": "simple", "steps": 4, "strength": 0.6, **case}
        expected_sigmas = fref.sdedit_sigmas(f.schedule, full["scheduler"], full["steps"], full["strength"],
                                             full["semantics"])
        check_sigmas(store[f"sig_{key}"], expected_sigmas, f"{kind} {key}")
        sigmas = store[f"sig_{key}"]
        if key == "repeats":
            expected = g
            for k in range(2):
                expected = fref.sdedit(f.denoiser, f.schedule, expected, sigmas, 9 + k)
            wrong = fref.sdedit(f.denoiser, f.schedule, fref.sdedit(f.denoiser, f.schedule, g, sigmas, 9), sigmas, 9)
            assert max_difference(wrong, store[key]) > 1e-2, "one seed for both repeats would pass"
        else:
            expected = fref.sdedit(f.denoiser, f.schedule, g, sigmas, case.get("seed", SEED),
                                   mask=m if key == "masked" else None)
        assert bool(torch.isfinite(store[key]).all()), f"{kind} {key}: non-finite latent"
        print(f"{kind} {key}: {max_difference(store[key], expected) / float(expected.abs().max()):.1e} of the largest value")
        assert_close_across_paths(store[key], expected, **TRAJECTORY, what=f"{kind} {key}")
        assert max_difference(store[key], g) > 0.1, f"{kind} {key}: it did not sample"
        # VE noising (z0 + sigma0 eps, the UNet formula) on a flow model lands far away
        if key in ("paper", "diffusers", "comfy", "normal"):
            ve = fref.sdedit(f.denoiser, f.schedule, g, sigmas, SEED, ve_noise=True)
            assert max_difference(ve, store[key]) > 1e-2, f"{kind} {key}: VE noising would pass"
    # the mask: outside it the guide comes back; a hard edge or no mask would be caught
    masked = store["masked"]
    assert_close_across_paths(masked[..., 4:], g[..., 4:], **TRAJECTORY, what=f"{kind} outside the mask")
    sigmas = store["sig_masked"]
    for wrong_mask, what in (((m > 0.75).float(), "a hard mask edge"), (None, "no mask")):
        wrong = fref.sdedit(f.denoiser, f.schedule, g, sigmas, SEED, mask=wrong_mask)
        assert max_difference(wrong, masked) > 1e-2, f"{kind}: {what} would pass"
    # the paper start without the flow shift (sigma0 = t0) is another run altogether (schnell has no shift)
    if kind == "flux_schnell":
        return
    unshifted = store["sig_paper"].clone()
    unshifted[0] = 0.6
    assert max_difference(fref.sdedit(f.denoiser, f.schedule, g, unshifted, SEED), store["paper"]) > 1e-2


# ----------------------------------------------------------------------------------------------
# GradOP+


GRADOP = {"strength": 0.8, "iterative_steps": 2, "grad_steps": 1, "learning_rate": 0.1,
          "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full", "mode": "GradOP+",
          "gamma": 0.001}


def gradop_node(prompt, node_id, key, kind, **overrides):
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "strokes": ["10", 0],
              "seed": SEED, "steps": 4, "cfg": SETTINGS[kind][0], "sampler_name": "euler", "scheduler": "simple",
              **GRADOP, "width": 0, "height": 0, "batch_size": 1, **overrides}
    prompt[node_id] = {"class_type": "GS_GradOPPlus", "inputs": inputs}
    capture(prompt, node_id + "a", key, latent=[node_id, 0])
    capture(prompt, node_id + "b", key + "_images", image=[node_id, 1])


def gradop_oracle(f, target, variant="flow", **settings):
    s = {**GRADOP, **settings}
    margins = Margins()
    result = fref.gradop_plus(f.denoiser, fref.FlowDecode(f.decoder, f.schedule, margins), f.schedule,
                              f.schedule.scheduler("simple", 4), (1, 16, 8, 8), SEED, target,
                              s["painting_function"], s["strength"], s["iterative_steps"], s["grad_steps"],
                              s["learning_rate"], margins, variant)
    result.margins = margins
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_gradop_plus_on_flow_matches_the_reference(host, store, flow, kind):
    """Empty latent -> x = eps at sigma 1; after steps 1 and 2 of 4 (strength 0.8): z = x / sqrt((1-s)^2 + s^2),
    Adam on the blurred decode vs the strokes, x = (1 - s) z* + s eps' (seed + 1 + iteration)."""
    prompt = base_prompt(kind)
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    capture(prompt, "10c", "strokes", image=["10", 0])
    cases = {"k2": dict(), "k1": dict(iterative_steps=1, grad_steps=3)}
    for n, (key, case) in enumerate(cases.items()):
        gradop_node(prompt, f"2{n}", key, kind, **case)
    host.run(prompt)
    f = flow(kind)
    target = store["strokes"].movedim(-1, 1)
    for key, case in cases.items():
        result = gradop_oracle(f, target, **case)
        assert result.levels == ([1, 2] if key == "k2" else [1])
        latent, images = store[key], store[key + "_images"]
        what = f"{kind} {key} (closest clamp margin {result.margins.clamp:.1e})"
        assert bool(torch.isfinite(latent).all()), f"{what}: non-finite latent"
        scale = float(result.latent.abs().max())
        print(f"{what}: latent {max_difference(latent, result.latent) / scale:.1e} of the largest value")
        assert_close_across_paths(latent, result.latent, rtol=LATENT_RTOL, scale=scale, why=ORACLE,
                                  what=f"{what}: latent")
        assert_close_across_paths(images, torch.cat(result.optimised), rtol=IMAGE_RTOL, why=ORACLE,
                                  what=f"{what}: optimised images")
        assert result.losses[0][1] < result.losses[0][0], f"{what}: the optimisation did not lower the loss"
        # the wrong flow formulas land far away: VE re-noise z* + s eps, and the UNet's sqrt(1 + s^2) mapping
        for variant in ("ve_renoise", "unit_vp"):
            wrong = gradop_oracle(f, target, variant=variant, **case)
            away = max_difference(latent, wrong.latent) / scale
            print(f"{what}: {variant} {away:.1e} away")
            assert away > 100 * LATENT_RTOL, f"{what}: {variant} would pass"


# ----------------------------------------------------------------------------------------------
# The flow <-> VP-equivalent mapping (guidance/gradop.py to_vp / renoise, guidance/panorama.py vp_scale)


SIGMAS = (0.05, 0.3, 0.5, 0.77, 0.95)


def test_flow_vp_mapping_against_finite_differences_and_the_models_noise_scaling(host):
    """z = x / c with c = sqrt((1-s)^2 + s^2): its derivative, the gradient rule dL/dx = dL/dz / c and the step rule
    (a VP step z - w dL/dz is x - w c^2 dL/dx in flow space) against central finite differences in float64;
    z = a x0 + b eps with a^2 + b^2 = 1 and a = 1 / sqrt(1 + sigma_ve^2), sigma_ve = s / (1 - s); the re-noise is the
    model's own noise_scaling (the flow marginal) and the VP re-noise mapped back."""
    import comfy.model_sampling
    from guidance import gradop, panorama

    const = comfy.model_sampling.CONST()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    weights = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def loss_z(z):
        return (torch.sin(z) * weights).sum() + (z ** 3).sum() * 0.1

    for s in SIGMAS:
        c = math.sqrt((1 - s) ** 2 + s ** 2)
        # derivative of the mapping: d to_vp / dx, by central differences on every element
        h = 1e-6
        probe = torch.zeros_like(x)
        probe.view(-1)[7] = h
        fd = (gradop.to_vp(x + probe, s, flow=True) - gradop.to_vp(x - probe, s, flow=True)) / (2 * h)
        assert abs(float(fd.view(-1)[7]) - 1 / c) < 1e-8 and float(fd.abs().sum() - fd.view(-1)[7].abs()) < 1e-8
        # the gradient of L(to_vp(x)) by autograd vs finite differences, and vs dL/dz / c
        xv = x.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(loss_z(gradop.to_vp(xv, s, flow=True)), xv)
        numeric = torch.zeros_like(x)
        for i in range(x.numel()):
            e = torch.zeros_like(x)
            e.view(-1)[i] = h
            numeric.view(-1)[i] = (loss_z(gradop.to_vp(x + e, s, flow=True))
                                   - loss_z(gradop.to_vp(x - e, s, flow=True))) / (2 * h)
        assert_close_across_paths(grad_x, numeric, rtol=1e-6, why="autograd vs central differences (float64, h 1e-6)")
        zv = (x / c).requires_grad_(True)
        (grad_z,) = torch.autograd.grad(loss_z(zv), zv)
        assert_close_across_paths(grad_x, grad_z / c, rtol=1e-12, why=FORMULA)
        # the VP step mapped to flow space is panorama's x - w vp_scale dL/dx
        w = 0.3
        stepped = panorama.nudge(x, grad_x, w, s, flow=True)
        assert_close_across_paths(stepped, c * (x / c - w * grad_z), rtol=1e-12, why=FORMULA)
        assert abs(panorama.vp_scale(s, flow=True) - c ** 2) < 1e-15
        # the VP-equivalent variable: unit total weight, sqrt(abar) from sigma_ve = s / (1 - s)
        a, b = (1 - s) / c, s / c
        assert abs(a * a + b * b - 1) < 1e-12
        sigma_ve = s / (1 - s)
        assert abs(a - 1 / math.sqrt(1 + sigma_ve ** 2)) < 1e-12
        # re-noise: the model's own noise_scaling (the flow marginal), and the VP re-noise mapped back
        z_star = torch.randn(x.shape, generator=gen)
        eps = torch.randn(x.shape, generator=gen)
        renoised = gradop.renoise(z_star, eps, s, flow=True)
        model_marginal = const.noise_scaling(torch.tensor([s]), eps, z_star)
        assert_close_across_paths(renoised, model_marginal, rtol=1e-5, why=FORMULA)
        assert_close_across_paths(renoised, c * (a * z_star + b * eps), rtol=1e-5, why=FORMULA)
        assert_close_across_paths(gradop.to_vp(renoised, s, flow=True), a * z_star + b * eps, rtol=1e-5, why=FORMULA)
        # the UNet formulas would not be it
        assert max_difference(gradop.renoise(z_star, eps, s, flow=False), model_marginal) > 1e-2


def test_unet_vp_step_rule_against_finite_differences(host):
    """The EPS/V form of the same rules: z = x / sqrt(1 + s^2), dL/dx = dL/dz / sqrt(1 + s^2) (autograd vs central
    differences) and the VP step z - w dL/dz is x - w (1 + s^2) dL/dx (panorama.nudge / vp_scale)."""
    from guidance import gradop, panorama

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 3, generator=gen, dtype=torch.float64) * 3
    weights = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def loss_z(z):
        return (torch.sin(z) * weights).sum() + (z ** 3).sum() * 0.1

    h = 1e-6
    for s in (0.03, 0.8, 4.0, 14.6):
        k = math.sqrt(1 + s * s)
        xv = x.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(loss_z(gradop.to_vp(xv, s)), xv)
        numeric = torch.zeros_like(x)
        for i in range(x.numel()):
            e = torch.zeros_like(x)
            e.view(-1)[i] = h
            numeric.view(-1)[i] = (loss_z(gradop.to_vp(x + e, s)) - loss_z(gradop.to_vp(x - e, s))) / (2 * h)
        assert_close_across_paths(grad_x, numeric, rtol=1e-6, why="autograd vs central differences (float64, h 1e-6)")
        zv = (x / k).requires_grad_(True)
        (grad_z,) = torch.autograd.grad(loss_z(zv), zv)
        assert_close_across_paths(grad_x, grad_z / k, rtol=1e-12, why=FORMULA)
        assert_close_across_paths(panorama.nudge(x, grad_x, 0.3, s), k * (x / k - 0.3 * grad_z), rtol=1e-12,
                                  why=FORMULA)


def test_flow_renoise_has_the_flow_marginals_moments(host):
    """Over 400000 noise draws per level, (1 - s) z* + s eps has mean (1 - s) z* and standard deviation s. Bounds:
    5 standard errors (mean: s / sqrt(n); standard deviation: s / sqrt(2n))."""
    from guidance import gradop

    n = 400_000
    gen = torch.Generator().manual_seed(3)
    z_star = torch.tensor([1.7, -0.4, 0.0, 2.5], dtype=torch.float64)
    for s in SIGMAS:
        eps = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        draws = gradop.renoise(z_star.expand(n, 4), eps, s, flow=True)
        mean, std = draws.mean(0), draws.std(0)
        assert float((mean - (1 - s) * z_star).abs().max()) < 5 * s / math.sqrt(n), (s, mean)
        assert float((std - s).abs().max()) < 5 * s / math.sqrt(2 * n), (s, std)
        ve = gradop.renoise(z_star.expand(n, 4), eps, s, flow=False).mean(0)
        assert float((ve - (1 - s) * z_star).abs().max()) > 20 * s / math.sqrt(n)  # VE re-noise keeps z*, fails
