"""GradOP+ / GradOP nodes against the plain-torch reference loop (tests/oracles/reference.py).

The reference (Singh et al., CVPR 2023; docs/methods/gradop.md sections 1 and 4) is written out in
``reference.gradop``: levels i0 = int(N (1 - strength)) in float, Euler (= DDIM eta 0) with CFG between them,
z = x / sqrt(1 + s^2), a fresh hand-written Adam (default betas) on sum_b mean((f(clamp(decode(z))) - y)^2),
re-noising x = z* + s eps with eps from a CPU generator seeded seed + 1 + iteration, and our own blur, median
and palette.

Tolerances, and why Adam steps are few:
  * Adam's update m / sqrt(v) is scale-free: after one step it is lr * sign(g), after a few it depends on
    ratios of gradients only. The loss also has branches: clamp (a pixel at 1 - 1e-7 has a gradient, at
    1 + 1e-7 none) and the median (which window element is selected). Float32 rounding (1e-7) that moves a
    value across such a branch changes that element's step by a whole lr, and the sampler carries it on.
    Measured on these models (node vs reference, same math): after one optimisation of 1 / 4 / 12 Adam steps
    z differs by 1e-7 / 1e-6 / 1e-2. So a whole run is compared with 1 Adam step per iteration (several
    iterations, which exercises the re-noising and the fresh Adam), and the Adam loop itself with 4 steps in
    a single iteration.
  * Latents are raw VAE latents of magnitude ~40 after 8 UNet steps: compared to 2e-5 relative to their
    largest value (measured 5e-6 at most, for the palette with 2 Adam steps; 0 for the median, whose reference
    rounds exactly like the node). Decoded images in [0, 1]: 1e-4 (measured 7e-6 at most). Logged painting losses
    are printed with 5 decimals: compared to 2e-5. The variants the tests rule out land 2e-2 to 0.9 (relative)
    away, i.e. 1000x the tolerance or more.
  * Every test also shows that the tolerance discriminates: the reference with the bug the test targets
    (the same re-noising draw each iteration, round() for the start index, no mask, ...) lands far outside it.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image


from . import reference as ref
from devkit import graphs
from devkit.tolerance import ORACLE, assert_close_across_paths

from .common import base_prompt, capture, max_difference

STEPS, SEED, CFG = 8, 7, 5.0
METHOD_DEFAULTS = {"strength": 0.8, "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
                   "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full",
                   "mode": "GradOP+", "gamma": 0.001}
LOG = re.compile(r"(GradOP\S*).* iteration (\d+) at sigma ([\d.]+): painting loss ([\d.e+-]+) -> ([\d.e+-]+)")
LATENT_RTOL = 2e-5  # of the largest |value|
IMAGE_RTOL = 1e-4  # of the largest value (images in [0, 1])
LOSS_ATOL = 2e-5
PAINTING = "gs_oracle_painting.png"


def painting_pixels() -> np.ndarray:
    """A 32x32 stroke painting: sky, grass, earth, a yellow sun, an anti-aliased horizon row and a 1-pixel red
    speck (0.1 % of the image, below the palette's 0.2 % minimum)."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:14] = (110, 170, 235)
    img[14:, :20] = (60, 160, 70)
    img[14:, 20:] = (140, 90, 40)
    img[3:9, 22:28] = (240, 210, 40)
    img[13, :20] = ((np.array([110, 170, 235]) + np.array([60, 160, 70])) // 2)
    img[20, 5] = (220, 30, 30)
    return img


@pytest.fixture(scope="module")
def painting_file(host):
    import folder_paths
    Image.fromarray(painting_pixels()).save(f"{folder_paths.get_input_directory()}/{PAINTING}")
    return PAINTING


def load_painting(prompt, node_id="10"):
    prompt[node_id] = {"class_type": "LoadImage", "inputs": {"image": PAINTING}}
    return [node_id, 0]


def node_inputs(strokes, **overrides):
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "strokes": strokes,
              "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "ddim_uniform",
              **METHOD_DEFAULTS, "width": 0, "height": 0, "batch_size": 1}
    inputs.update(overrides)
    return inputs


def add_gradop(prompt, node_id, key, strokes, mask=None, **overrides):
    prompt[node_id] = {"class_type": "GS_GradOPPlus", "inputs": node_inputs(strokes, **overrides)}
    if mask is not None:
        prompt[node_id]["inputs"]["mask"] = mask
    capture(prompt, f"{node_id}1", key, latent=[node_id, 0])
    capture(prompt, f"{node_id}2", key + "_images", image=[node_id, 1])


def oracle(tiny, denoiser, target, latent_shape, mask=None, **settings):
    s = {**METHOD_DEFAULTS, **settings}
    sigmas = tiny.schedule.scheduler("ddim_uniform", STEPS)
    margins = ref.Margins()
    decode = settings.get("decode") or ref.KLDecode(tiny.decoder, margins=margins)
    result = ref.gradop(denoiser(CFG), decode, sigmas, latent_shape, settings.get("seed", SEED), target,
                        s["painting_function"], strength=s["strength"], iterative_steps=s["iterative_steps"],
                        grad_steps=s["grad_steps"], lr=s["learning_rate"], mask=mask, mode=s["mode"], gamma=s["gamma"],
                        sigma_max=tiny.schedule.sigma_max, same_noise_every_iteration=settings.get("same_noise", False),
                        margins=margins)
    result.margins = margins
    return result


def logged(caplog):
    return [(m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5)))
            for m in (LOG.search(r.getMessage()) for r in caplog.records) if m]


def expect_logs(expected: list[tuple], log: list[tuple]):
    """Every reference optimisation (mode, iteration, sigma, loss before, loss after) is in the log, whatever the
    order the executor ran the nodes in."""
    unused = list(log)
    for mode, iteration, sigma, first, last in expected:
        match = [e for e in unused if e[0] == mode and e[1] == iteration and abs(e[2] - sigma) < 6e-5
                 and abs(e[3] - first) < LOSS_ATOL and abs(e[4] - last) < LOSS_ATOL]
        assert match, f"no log line for {mode} iteration {iteration} at sigma {sigma:.4f}: loss {first:.5f} -> " \
                      f"{last:.5f}; logged: {unused}"
        unused.remove(match[0])


def expected_log(result, mode="GradOP+"):
    return [(mode, i + 1, s, a, b) for i, (s, (a, b)) in enumerate(zip(result.sigmas, result.losses))]


def check(result, latent, images, what):
    margins = result.margins
    what = f"{what} (the reference came within {margins.clamp:.1e} of a clamp bound and {margins.median:.1e} of a " \
           f"median tie; near 1e-6, a failure can be float32 rounding taking the other branch)"
    print(f"{what}: latent {max_difference(latent, result.latent):.2e}, images "
          f"{max_difference(images, torch.cat(result.optimised)):.2e}")
    scale = float(result.latent.abs().max())
    assert_close_across_paths(latent, result.latent, rtol=LATENT_RTOL, scale=scale, why=ORACLE, what=f"{what}: latent")
    assert_close_across_paths(images, torch.cat(result.optimised), rtol=IMAGE_RTOL, why=ORACLE,
                              what=f"{what}: optimised images")


def clearly_different(result, latent, what):
    scale = float(result.latent.abs().max())
    print(f"{what}: {max_difference(latent, result.latent) / scale:.1e} of the largest value away")
    assert max_difference(latent, result.latent) > 100 * LATENT_RTOL * scale, \
        f"{what}: the comparison cannot tell this variant apart"


# ----------------------------------------------------------------------------------------------


def test_node_form_matches_the_reference_for_each_painting_function(host, store, tiny, denoiser, painting_file, caplog):
    """Method defaults (strength 0.8, 3 iterations, lr 0.1, fp32 decoder) on 8 ddim_uniform steps at 32x32, one Adam
    step per iteration, for every painting function; then 4 Adam steps in one iteration (the Adam loop itself).
    'median + palette' runs on a flat two-colour painting: its palette is then the painted colours exactly (the
    extraction from anti-aliased paintings has its own oracle in test_regions_oracle.py)."""
    caplog.set_level("INFO")
    prompt = base_prompt()
    strokes = load_painting(prompt)
    capture(prompt, "11", "strokes", image=strokes)
    prompt["12"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    capture(prompt, "13", "flat", image=["12", 0])
    inputs = {"gaussian blur": strokes, "median": strokes, "median + palette": ["12", 0]}
    functions = ["gaussian blur", "median", "median + palette"]
    cases = {}
    for n, function in enumerate(functions):
        cases[f"k3_{n}"] = dict(painting_function=function, grad_steps=1)
        # the palette's soft assignment (temperature 0.01) makes later Adam steps more sensitive: 2 steps
        cases[f"k1_{n}"] = dict(painting_function=function, grad_steps=2 if "palette" in function else 4,
                                iterative_steps=1)
    for n, (key, settings) in enumerate(cases.items()):
        add_gradop(prompt, f"2{n}", key, inputs[settings["painting_function"]], **settings)
    host.run(prompt)
    target = store["strokes"].movedim(-1, 1)
    targets = {"gaussian blur": target, "median": target, "median + palette": store["flat"].movedim(-1, 1)}
    log = logged(caplog)
    expected = []
    for key, settings in cases.items():
        result = oracle(tiny, denoiser, targets[settings["painting_function"]], (1, 4, 4, 4), **settings)
        assert result.levels == ([2, 3, 4] if settings.get("iterative_steps", 3) == 3 else [2])  # int(8 * 0.2) = 1
        check(result, store[key], store[key + "_images"], f"{key} {settings}")
        expected += expected_log(result)
    expect_logs(expected, log)
    assert len(log) == len(expected)

    # the comparison would fail on the planted bugs it targets
    k3 = cases["k3_0"]
    clearly_different(oracle(tiny, denoiser, target, (1, 4, 4, 4), same_noise=True, **k3), store["k3_0"],
                      "the same re-noising draw every iteration")
    rounded = oracle(tiny, denoiser, target, (1, 4, 4, 4), strength=0.75, **k3)  # int(8 * 0.25) = 2 = round(1.6)
    assert rounded.levels == [3, 4, 5]
    clearly_different(rounded, store["k3_0"], "start index round(N (1 - strength)) instead of int")


def test_mask_and_batches_of_paintings(host, store, tiny, denoiser, caplog):
    """A mask (only its pixels enter the loss, masked mean) and a batch of two different paintings with
    batch_size 2 (latent batch 4: painting 0 for items 0-1, painting 1 for items 2-3; one noise draw over the
    batch; the loss summed over images)."""
    caplog.set_level("INFO")
    prompt = base_prompt()
    prompt["10"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    prompt["11"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 32, "height": 32, "left": 0x33AA44,
                                                               "right": 0xEEDD22, "batch": 1}}
    prompt["12"] = {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}}
    capture(prompt, "13", "pair", image=["12", 0])
    cases = {"mask_k2": dict(grad_steps=1, iterative_steps=2), "mask_k1": dict(grad_steps=4, iterative_steps=1),
             "batch_k2": dict(grad_steps=1, iterative_steps=2, batch_size=2),
             "batch_k1": dict(grad_steps=2, iterative_steps=1, batch_size=2)}
    add_gradop(prompt, "20", "mask_k2", ["10", 0], mask=["10", 1], **cases["mask_k2"])
    add_gradop(prompt, "21", "mask_k1", ["10", 0], mask=["10", 1], **cases["mask_k1"])
    add_gradop(prompt, "22", "batch_k2", ["12", 0], **cases["batch_k2"])
    add_gradop(prompt, "23", "batch_k1", ["12", 0], **cases["batch_k1"])
    host.run(prompt)
    pair = store["pair"].movedim(-1, 1)
    single = pair[:1]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1.0  # GS_TestStrokes' mask: the left half
    expected = []
    for key in ("mask_k2", "mask_k1"):
        result = oracle(tiny, denoiser, single, (1, 4, 4, 4), mask=mask, **cases[key])
        check(result, store[key], store[key + "_images"], key)
        expected += expected_log(result)
        unmasked = oracle(tiny, denoiser, single, (1, 4, 4, 4), **cases[key])
        clearly_different(unmasked, store[key], f"{key} without the mask")
    target = pair.repeat_interleave(2, dim=0)
    for key in ("batch_k2", "batch_k1"):
        settings = {k: v for k, v in cases[key].items() if k != "batch_size"}
        result = oracle(tiny, denoiser, target, (4, 4, 4, 4), **settings)
        assert store[key].shape == (4, 4, 4, 4)
        check(result, store[key], store[key + "_images"], key)
        expected += expected_log(result)
        wrong = oracle(tiny, denoiser, pair.repeat(2, 1, 1, 1), (4, 4, 4, 4), **settings)  # paintings interleaved
        clearly_different(wrong, store[key], f"{key} with the paintings assigned 0, 1, 0, 1")
    expect_logs(expected, logged(caplog))


def test_gradop_reconstruction_mode(host, store, tiny, denoiser, painting_file, caplog):
    """GradOP (reconstruction): the full text sample, Adam at sigma 0 on MSE + gamma mean((z - z_text)^2), re-noise
    to sigma_{i0+1} with seed + 1, then sampling from i0 + 1 to the end."""
    caplog.set_level("INFO")
    prompt = base_prompt()
    strokes = load_painting(prompt)
    capture(prompt, "11", "strokes", image=strokes)
    cases = {"gamma_default": dict(mode="GradOP (reconstruction)", grad_steps=4),
             "gamma_large": dict(mode="GradOP (reconstruction)", grad_steps=4, gamma=2.0, painting_function="median")}
    for n, (key, settings) in enumerate(cases.items()):
        add_gradop(prompt, f"2{n}", key, strokes, **settings)
    host.run(prompt)
    target = store["strokes"].movedim(-1, 1)
    expected = []
    for key, settings in cases.items():
        result = oracle(tiny, denoiser, target, (1, 4, 4, 4), **settings)
        check(result, store[key], store[key + "_images"], key)
        expected += expected_log(result, mode="GradOP")
    expect_logs(expected, logged(caplog))
    no_proximity = oracle(tiny, denoiser, target, (1, 4, 4, 4), **{**cases["gamma_large"], "gamma": 0.0})
    clearly_different(no_proximity, store["gamma_large"], "GradOP without the proximity term")
    late = oracle(tiny, denoiser, target, (1, 4, 4, 4), **{**cases["gamma_default"], "strength": 0.6})
    clearly_different(late, store["gamma_default"], "GradOP re-noised to another level")


def test_sampler_form_through_sampler_custom_and_sampler_custom_advanced(host, store, tiny, denoiser, painting_file,
                                                                          caplog):
    caplog.set_level("INFO")
    prompt = base_prompt()
    strokes = load_painting(prompt)
    capture(prompt, "11", "strokes", image=strokes)
    settings = dict(grad_steps=1)
    method = {**METHOD_DEFAULTS, **settings}
    prompt["20"] = {"class_type": "GS_GradOPPlusSampler", "inputs": {"sampler_name": "euler", "vae": ["1", 2],
                                                                     "strokes": strokes, **method}}
    latent = graphs.empty_latent(prompt, "21")
    sigmas = graphs.basic_scheduler(prompt, "22", STEPS, "ddim_uniform")
    capture(prompt, "24", "custom", latent=graphs.sampler_custom(prompt, "23", ["20", 0], sigmas, latent, SEED, CFG))
    capture(prompt, "28", "advanced", latent=graphs.sampler_custom_advanced(prompt, "27", "25", "26", ["20", 0],
                                                                             sigmas, latent, SEED, CFG))
    host.run(prompt)
    result = oracle(tiny, denoiser, store["strokes"].movedim(-1, 1), (1, 4, 4, 4), **settings)
    scale = float(result.latent.abs().max())
    for key in ("custom", "advanced"):
        assert_close_across_paths(store[key], result.latent, rtol=LATENT_RTOL, scale=scale, why=ORACLE, what=key)
    expect_logs(expected_log(result) * 2, logged(caplog))
    clearly_different(oracle(tiny, denoiser, store["strokes"].movedim(-1, 1), (1, 4, 4, 4), same_noise=True,
                             **settings), store["custom"], "the same re-noising draw every iteration")


# ----------------------------------------------------------------------------------------------
# Decoder precision: each choice computes in the precision it names


def test_decoder_choice_computes_in_the_precision_it_names(host, store, tiny, denoiser, painting_file):
    """A forward hook on every TAESD decoder Block records the dtype it computes in. With K iterations of G Adam
    steps the decoder copy runs K * G forwards with gradient plus K without (the 'optimised' images), each through
    all of its Blocks; the shared VAE is not used (no VAE Decode in the graph)."""
    import comfy.taesd.taesd
    blocks_per_forward = sum(isinstance(m, comfy.taesd.taesd.Block) for m in tiny.decoder.taesd_decoder.modules())
    assert blocks_per_forward == 10
    k, g = 1, 2
    from comfy_execution.utils import get_executing_context
    seen: dict[str, list] = {}

    def hook(module, args, output):
        if isinstance(module, comfy.taesd.taesd.Block):
            context = get_executing_context()
            weight = next(module.parameters())
            seen.setdefault(context.node_id if context else None, []).append((args[0].dtype, weight.dtype))

    decoders = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": tiny.vae.vae_dtype}
    prompt = base_prompt()
    strokes = load_painting(prompt)
    capture(prompt, "11", "strokes", image=strokes)
    for n, decoder in enumerate(decoders):
        add_gradop(prompt, f"2{n}", decoder, strokes, decoder=decoder, iterative_steps=k, grad_steps=g)
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        host.run(prompt)
    finally:
        handle.remove()
    assert set(seen) == {f"2{n}" for n in range(len(decoders))}  # only the GradOP+ nodes ran the decoder
    results = {}
    for n, (decoder, expected_dtype) in enumerate(decoders.items()):
        calls = seen[f"2{n}"]
        assert len(calls) == blocks_per_forward * (k * g + k), (decoder, len(calls))
        assert set(calls) == {(expected_dtype, expected_dtype)}, f"decoder {decoder!r} computed in {set(calls)}"
        results[decoder] = (store[decoder], store[decoder + "_images"])

    target = store["strokes"].movedim(-1, 1)
    reference_fp32 = oracle(tiny, denoiser, target, (1, 4, 4, 4), iterative_steps=k, grad_steps=g)
    check(reference_fp32, *results["fp32"], "fp32 decoder")
    check(reference_fp32, *results["auto"], "auto decoder (the VAE's own fp32 on the CPU)")
    for half in ("bf16", "fp16"):
        # a reduced-precision decoder gives an approximation of the fp32 run, never the fp32 numbers themselves
        image_gap = max_difference(results[half][1], torch.cat(reference_fp32.optimised))
        assert 1e-3 < image_gap < 0.1, (half, image_gap)


def test_half_resolution_loss_and_the_taesd_decoder(host, store, tiny, denoiser, painting_file, vae_approx, caplog):
    """loss_resolution 'half': decode the 2x average-pooled latent, against strokes area-resized to half size, the
    blur sized for the half image. decoder 'taesd': the TAESD decoder from models/vae_approx, which takes
    model-space latents (no division by 0.18215)."""
    import comfy.taesd.taesd
    caplog.set_level("INFO")
    prompt = base_prompt()
    strokes = load_painting(prompt)
    capture(prompt, "11", "strokes", image=strokes)
    cases = {"half": dict(loss_resolution="half", grad_steps=1), "taesd": dict(decoder="taesd", grad_steps=1)}
    for n, (key, settings) in enumerate(cases.items()):
        add_gradop(prompt, f"2{n}", key, strokes, **settings)
    host.run(prompt)
    target = store["strokes"].movedim(-1, 1)
    half_target = torch.nn.functional.interpolate(target, size=(16, 16), mode="area")
    margins = ref.Margins()
    half = oracle(tiny, denoiser, half_target, (1, 4, 4, 4), grad_steps=1,
                  decode=ref.KLDecode(tiny.decoder, margins=margins, pool=True))
    half.margins = margins
    assert store["half_images"].shape == (3, 16, 16, 3)
    check(half, store["half"], store["half_images"], "loss_resolution half")
    taesd_module = comfy.taesd.taesd.TAESD(None, str(vae_approx / "taesd_decoder.safetensors"), latent_channels=4)
    taesd_module.requires_grad_(False)
    margins = ref.Margins()
    taesd = oracle(tiny, denoiser, target, (1, 4, 4, 4), grad_steps=1,
                   decode=ref.KLDecode(taesd_module, margins=margins, model_space=True))
    taesd.margins = margins
    check(taesd, store["taesd"], store["taesd_images"], "taesd decoder")
    expect_logs(expected_log(half) + expected_log(taesd), logged(caplog))
    unscaled = oracle(tiny, denoiser, target, (1, 4, 4, 4), grad_steps=1, decode=ref.KLDecode(taesd_module))
    clearly_different(unscaled, store["taesd"], "TAESD fed raw (unscaled) latents")
