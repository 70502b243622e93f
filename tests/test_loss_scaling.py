"""Reduced-precision gradients never vanish silently (nodes/gradients.LossScaler), and CLIP guidance's masked
step, flow-model paper step and interrupts, through the real executor where a node is involved."""
from __future__ import annotations

import logging

import pytest
import torch

from devkit import graphs
from devkit import harness
from guidance import semantic as semantic_guidance
from test_semantic_graph import RN, VIT, add_branch, guidance_inputs, guided_steps

PACK = harness.PACK_NAME


def gradients_module():
    return harness.loaded_module(f"{PACK}.nodes.toolkit.gradients")


def semantic_nodes():
    return harness.loaded_module(f"{PACK}.nodes.semantic")


def open_clip_model():
    return harness.loaded_module(f"{PACK}.nodes.toolkit.open_clip_model")


@pytest.fixture
def records():
    store = harness.test_nodes_module().semantic_probes.RECORDS
    store.clear()
    return store


@pytest.fixture
def scalers(monkeypatch, host):
    """Every LossScaler built while the test runs (to read its back-offs and skips after a prompt)."""
    gradients = gradients_module()
    made = []
    original = gradients.LossScaler.__init__

    def tracking(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(gradients.LossScaler, "__init__", tracking)
    return made


# --- the scaler ------------------------------------------------------------------------------------


def overflowing_loss(x: torch.Tensor, factor: float):
    """A loss whose backward runs in fp16: d/dx sum(fp16(x) * factor) = factor, but the scaled gradient
    scale * factor overflows fp16 (65,504) once it is above it."""
    return lambda: (x.half() * factor).float().sum()


def test_the_scaler_backs_off_until_the_gradient_is_finite_and_keeps_the_lower_scale(host):
    gradients = gradients_module()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    scaler = gradients.LossScaler(49152.0, "test", reduced_precision=True)
    calls = []
    loss = overflowing_loss(x, 100.0)
    (grad,) = scaler.gradient(lambda: calls.append(1) or loss(), [x])
    # 49152 -> 6144 -> 768 -> 96: the first scale with 100 * scale below 65,504
    assert scaler.scale == 96.0 and scaler.backoffs == 3 and len(calls) == 4 and scaler.skipped == 0
    torch.testing.assert_close(grad, torch.full_like(x, 100.0), rtol=0, atol=0)  # exact: 100 * 96 / 96: exact in fp16
    scaler.gradient(loss, [x])
    assert scaler.scale == 96.0 and scaler.backoffs == 3  # the lowered scale is kept: no retry this time


def test_the_scaler_grows_back_to_its_start_after_finite_gradients(host):
    gradients = gradients_module()
    x = torch.randn(4, requires_grad=True)
    scaler = gradients.LossScaler(64.0, "test", growth_interval=2)
    scaler.gradient(overflowing_loss(x, 2000.0), [x])  # 64 * 2000 overflows: 8 * 2000 does not
    assert scaler.scale == 8.0
    for _ in range(4):
        scaler.gradient(overflowing_loss(x, 1.0), [x])
    assert scaler.scale == 32.0  # doubled after every 2 finite gradients
    for _ in range(10):
        scaler.gradient(overflowing_loss(x, 1.0), [x])
    assert scaler.scale == 64.0  # never above the start


def test_a_non_finite_forward_tries_fp32_once_then_skips_with_one_warning_per_run(host, caplog):
    gradients = gradients_module()
    x = torch.randn(4, requires_grad=True)
    scaler = gradients.LossScaler(1024.0, "Test Method", reduced_precision=True)
    passes = []

    class FullPrecision:
        def __enter__(self):
            passes.append(1)

        def __exit__(self, *exc):
            return False

    nan_loss = lambda: (x * float("nan")).sum()  # noqa: E731
    with caplog.at_level(logging.WARNING):
        assert scaler.gradient(nan_loss, [x], FullPrecision) is None
        assert scaler.gradient(nan_loss, [x], FullPrecision, what="other step") is None
    assert passes == [1, 1] and scaler.skipped == 2
    assert scaler.backoffs == 0  # a non-finite loss is not an overflow of the scaled backward: no back-off
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Test Method: the loss gradient is not finite (loss scale 1024, then an fp32 "
                                  "decoder pass); this guided step is skipped, left unguided.")

    # the fp32 pass rescues what the reduced precision could not
    flag = {"fp32": False}

    class Rescue:
        def __enter__(self):
            flag["fp32"] = True

        def __exit__(self, *exc):
            flag["fp32"] = False

    rescued = gradients.LossScaler(1024.0, "test").gradient(
        lambda: (x * (3.0 if flag["fp32"] else float("inf"))).sum(), [x], Rescue)
    torch.testing.assert_close(rescued[0], torch.full_like(x, 3.0), rtol=0, atol=0)  # exact: same call: exact


def test_in_fp32_a_non_finite_gradient_is_skipped_without_retries(host):
    gradients = gradients_module()
    x = torch.randn(4, requires_grad=True)
    scaler = gradients.LossScaler(1.0, "test", reduced_precision=False)
    calls = []
    assert scaler.gradient(lambda: calls.append(1) or (x.half() * 1e5).float().sum(), [x]) is None
    assert len(calls) == 1 and scaler.backoffs == 0 and scaler.skipped == 1


def test_a_decoder_copy_runs_in_fp32_inside_full_precision_and_returns_to_its_dtype(host):
    import comfy.latent_formats
    gradients = gradients_module()
    vae = harness.test_nodes_module().tiny.tiny_kl_vae(0)
    half = gradients.DifferentiableDecoder(vae, torch.float16)
    full = gradients.DifferentiableDecoder(vae, torch.float32)
    before = {k: v.clone() for k, v in half.module.state_dict().items()}
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    latent_format = comfy.latent_formats.SD15()
    with torch.inference_mode(False), torch.no_grad():
        with half.full_precision():
            assert half.dtype == torch.float32 and not half.reduced_precision
            inside = half.decode_model_space(z, latent_format)
        reference = full.decode_model_space(z, latent_format)
    # fp16 weights read back in fp32: the same numbers as the fp32 copy's to fp16 rounding of the weights
    assert float((inside - reference).abs().max()) <= 1e-2 * float(reference.abs().max())
    assert half.dtype == torch.float16 and half.reduced_precision
    after = half.module.state_dict()
    assert all(after[k].dtype == torch.float16 and torch.equal(after[k], v) for k, v in before.items())
    half.close()
    full.close()


# --- fp16 through the executor, at sizes where the per-pixel scale overflowed ---------------------------


def clip_style_prompt(decoder: str, tag: str, steps: int = 2) -> dict:
    """128 px, RN tower, style loss of a noise image: GradOP+'s per-pixel scale (49,152) overflowed fp16 there
    (measured: every x0 gradient element NaN at each guided step, so the step was zero)."""
    prompt = graphs.base()
    prompt["e"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}}
    prompt["g"] = {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1,
                                                          "color": 0x808080}}
    prompt["r"] = {"class_type": "ImageAddNoise", "inputs": {"image": ["g", 0], "seed": 3, "strength": 1.0}}
    add_branch(prompt, tag, RN, guidance_inputs(text="", text_weight=0.0, image_weight=1.0, image_loss="style",
                                                cutouts=0, decoder=decoder), steps=steps, reference=["r", 0],
               latent=["e", 0])
    return prompt


def test_clip_style_guidance_with_an_fp16_decoder_takes_the_fp32_step(host, clip_guidance, records, scalers,
                                                                      monkeypatch):
    """fp16 decoder at CLIP's own scale (x0 elements / total weight: 1024 here), and at the old per-pixel scale
    (49,152: every gradient NaN before) where the back-off must rescue it: both give finite first steps equal to
    the fp32 decoder's to fp16 rounding."""
    semantic = semantic_nodes().semantic
    host.run(clip_style_prompt("fp32", "fp32"))
    host.run(clip_style_prompt("fp16", "fp16"))
    monkeypatch.setattr(semantic, "clip_loss_scale", lambda reduced, elements, weight: 3.0 * 128 * 128)
    host.run(clip_style_prompt("fp16", "old"))
    full, half, old = scalers
    assert (full.initial, half.initial, old.initial) == (1.0, 4 * 16 * 16, 49152.0)
    assert half.skipped == 0 and half.backoffs == 0  # CLIP's own scale does not overflow here
    assert old.skipped == 0 and old.backoffs >= 1  # the per-pixel scale overflowed; the back-off rescued it
    steps = {tag: guided_steps(records, tag) for tag in ("fp32", "fp16", "old")}
    assert steps == {"fp32": [0, 1], "fp16": [0, 1], "old": [0, 1]}
    reference = records["fp32:before"][0]["denoised"] - records["fp32:after"][0]["denoised"]
    for tag in ("fp16", "old"):
        # before the first guided step every run makes the same calls
        torch.testing.assert_close(records[f"{tag}:before"][0]["denoised"], records["fp32:before"][0]["denoised"],  # abs: fp16 vs fp32 run, bound stated below relative to the data
                                   rtol=0, atol=0)
        step = records[f"{tag}:before"][0]["denoised"] - records[f"{tag}:after"][0]["denoised"]
        assert torch.isfinite(step).all() and float(step.abs().max()) > 0
        # the fp32 step to the fp16 decoder's rounding: measured 5.3e-2 RMS-relative for both scales (the tiny
        # random decoder's fp16 forward, not the scale); a zero or skipped step is 1.0 away
        error = float((step - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())
        assert error < 0.15, (tag, error)


def test_a_gradient_that_stays_non_finite_skips_the_step_with_one_warning(host, clip_guidance, records, caplog,
                                                                          monkeypatch):
    """A decoder whose output is NaN (in fp16 and in the fp32 retry): each guided step is skipped, the run ends
    as the unguided one, and the run logs one warning."""
    gradients = gradients_module()
    original = gradients._OwnedDecoder._decode
    monkeypatch.setattr(gradients._OwnedDecoder, "_decode",
                        lambda self, latent, clamp: original(self, latent, False) * float("nan"))
    prompt = clip_style_prompt("fp16", "nan")
    add_branch(prompt, "plain", None, None, steps=2, latent=["e", 0])
    with caplog.at_level(logging.WARNING):
        host.run(prompt)
    warnings = [r.getMessage() for r in caplog.records if "is skipped, left unguided" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "CLIP-guided step" in warnings[0]
    assert not guided_steps(records, "nan")
    captured = harness.test_nodes_module().CAPTURED
    torch.testing.assert_close(captured["nan"], captured["plain"], rtol=0, atol=0)  # exact: the same calls: exact


def test_gradop_and_the_panorama_sync_with_fp16_decoders_follow_their_fp32_runs(host, lpips_models, scalers):
    """The per-pixel scale still starts GradOP+ and the sync; with the scaler their fp16 results are finite and
    near the fp32 ones (no step skipped)."""
    captured = harness.test_nodes_module().CAPTURED
    results = {}
    for decoder in ("fp32", "fp16"):
        prompt = graphs.base()
        image = graphs.strokes(prompt, "10", width=128, height=128)
        graphs.gradop(prompt, "11", image, steps=10, iterative_steps=1, grad_steps=3, decoder=decoder)
        graphs.capture(prompt, "12", f"gradop {decoder}", latent=["11", 0])
        graphs.panorama(prompt, "20", f"panorama {decoder}", loss_decoder=decoder)
        host.run(prompt)
        results[decoder] = captured[f"gradop {decoder}"], captured[f"panorama {decoder}"]
    assert all(s.skipped == 0 for s in scalers) and len(scalers) == 4
    for half, full in zip(results["fp16"], results["fp32"]):
        assert torch.isfinite(half).all()
        error = float((half - full).abs().max() / full.abs().max())
        assert error < 0.05, error


# --- CLIP guidance: the masked step, the flow paper step --------------------------------------------


def masked_rms_reference(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    inside = x[..., top:top + size, left:left + size]
    return inside.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)


def test_the_normalised_step_inside_a_sixteenth_mask_has_the_documented_size():
    """A mask covering 2x2 of 8x8 latent cells: inside it the step is w * g/rms(g) * rms(cond - uncond), both
    RMS over those cells (written here by slicing), not 4x that."""
    gen = torch.Generator().manual_seed(0)
    grad = torch.zeros(2, 4, 8, 8)
    grad[..., 2:4, 4:6] = torch.randn(2, 4, 2, 2, generator=gen)
    x0, cond, uncond = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    pixel_mask = torch.zeros(1, 1, 64, 64)
    pixel_mask[..., 16:32, 32:48] = 1.0
    weights = semantic_guidance.mask_weights(pixel_mask, (8, 8))
    out = semantic_guidance.guided_x0(x0, grad, 0.5, 3.0, "normalised", cond, uncond, weights=weights)
    expected = x0.clone()
    expected[..., 2:4, 4:6] -= (0.5 * grad[..., 2:4, 4:6] / masked_rms_reference(grad, 2, 4, 2)
                                * masked_rms_reference(cond - uncond, 2, 4, 2))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6 * float(x0.abs().max()))  # abs: rtol 1e-5 with atol scaled to x0
    unweighted = semantic_guidance.guided_x0(x0, grad, 0.5, 3.0, "normalised", cond, uncond)
    ratio = (unweighted - x0)[..., 2:4, 4:6].norm() / (out - x0)[..., 2:4, 4:6].norm()
    # the old whole-latent RMS: 1/sqrt(1/16) = 4 times larger inside (times the correction's RMS ratio)
    assert float(ratio) > 1.5


def test_a_guided_step_inside_a_sixteenth_mask_through_the_executor(host, clip_guidance, records):
    prompt = graphs.base()
    prompt["m0"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    prompt["m1"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 16}}
    prompt["m"] = {"class_type": "MaskComposite", "inputs": {"destination": ["m0", 0], "source": ["m1", 0],
                                                             "x": 16, "y": 32, "operation": "add"}}
    weight = 0.4
    add_branch(prompt, "small", VIT, guidance_inputs(text_weight=weight, image_weight=0.0, cutouts=0), steps=3,
               mask=["m", 0])
    host.run(prompt)
    steps = guided_steps(records, "small")
    assert steps == [0, 1, 2]
    for i in steps:
        before, after = records["small:before"][i], records["small:after"][i]
        delta = before["denoised"] - after["denoised"]
        inside = delta[..., 4:6, 2:4]
        assert torch.count_nonzero(delta) == torch.count_nonzero(inside) > 0  # only the 2x2 cells move
        correction = masked_rms_reference(before["cond_denoised"] - before["uncond_denoised"], 4, 2, 2)
        size = masked_rms_reference(delta, 4, 2, 2)
        torch.testing.assert_close(size, weight * correction, rtol=1e-4, atol=0)  # abs: rtol 1e-4, relative


def test_the_paper_step_uses_the_flow_models_ve_equivalent_sigma(host):
    """The pure step against x = (1 - s) x0 + s eps rewritten by hand; the node's flow test on a ComfyUI flow
    ModelSampling. (Through the executor on tiny flow models: tests/test_semantic_flow.py.)"""
    import comfy.model_sampling
    gen = torch.Generator().manual_seed(1)
    x0, grad = torch.randn(3, 4, 4, 4, generator=gen), torch.randn(3, 4, 4, 4, generator=gen)

    class FlowConfig:  # what ModelSamplingDiscreteFlow reads (SD3's defaults)
        sampling_settings = {"shift": 3.0, "multiplier": 1000}

    class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass  # how comfy.model_base.model_sampling composes an SD3 model's sampling

    sampling = FlowSampling(FlowConfig())
    is_flow = semantic_nodes()._is_flow
    assert is_flow(type("Flow", (), {"model_sampling": sampling})())
    assert not is_flow(harness.test_nodes_module().tiny.tiny_model("sd15").model)
    sigma = torch.tensor([float(sampling.percent_to_sigma(p)) for p in (0.3, 0.6, 0.9)])
    # independently: x = (1 - s) x0 + s eps = (1 - s) (x0 + s/(1 - s) eps): the VE sigma is s/(1 - s)
    noise = torch.randn(3, 4, 4, 4, generator=gen)
    x_flow = sampling.noise_scaling(sigma, noise, x0)
    ve = sigma / (1 - sigma)
    torch.testing.assert_close(x_flow / (1 - sigma).view(-1, 1, 1, 1), x0 + ve.view(-1, 1, 1, 1) * noise,  # abs: rtol 1e-5 of the same formula rewritten
                               rtol=1e-5, atol=1e-5)
    out = semantic_guidance.guided_x0(x0, grad, 2.0, sigma, "paper", flow=True)
    torch.testing.assert_close(out, x0 - 2.0 * ve.view(-1, 1, 1, 1) ** 2 * grad, rtol=1e-5, atol=1e-5)  # abs: rtol 1e-5 of the same formula rewritten
    vp = semantic_guidance.guided_x0(x0, grad, 2.0, sigma, "paper")  # eps/v/EDM models: sigma itself
    torch.testing.assert_close(vp, x0 - 2.0 * sigma.view(-1, 1, 1, 1) ** 2 * grad, rtol=1e-5, atol=1e-5)  # abs: rtol 1e-5 of the same formula rewritten
    # pure noise (sigma 1): no step is defined (the formula is not finite there); the node's step guard keeps x0
    guard = harness.loaded_module(f"{PACK}.nodes.toolkit.guard")
    sigmas = torch.tensor([1.0, 0.5, 1.0])
    raw = semantic_guidance.guided_x0(x0, grad, 2.0, sigmas, "paper", flow=True)
    assert not torch.isfinite(raw[0::2]).all()
    edge = guard.StepGuard("test").apply(raw, x0)
    torch.testing.assert_close(edge[0::2], x0[0::2], rtol=0, atol=0)  # exact: x0 returned unchanged
    torch.testing.assert_close(edge[1], raw[1], rtol=0, atol=0)  # exact: the finite step is applied as it is
    assert torch.isfinite(edge).all()


def test_a_non_finite_gradient_never_reaches_x0(host):
    guard = harness.loaded_module(f"{PACK}.nodes.toolkit.guard")
    x0 = torch.randn(2, 4, 4, 4)
    grad = torch.randn(2, 4, 4, 4)
    grad[0, 0, 0, 0] = float("inf")
    cond, uncond = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    for mode in ("normalised", "paper"):
        out = guard.StepGuard("test").apply(semantic_guidance.guided_x0(x0, grad, 1.0, 2.0, mode, cond, uncond), x0)
        torch.testing.assert_close(out[0], x0[0], rtol=0, atol=0)  # exact: that sample is left as it is
        assert not torch.equal(out[1], x0[1]) and torch.isfinite(out).all()


# --- interrupt inside the CLIP-guided step ------------------------------------------------------


@pytest.mark.parametrize("where", ["step start", "after decode", "after clip"])
def test_an_interrupt_inside_the_guided_step_ends_the_prompt_before_the_next_stage(host, clip_guidance, records,
                                                                                   monkeypatch, where):
    """The interrupt flag set when the guided step starts / after its decode / after its CLIP forward: no
    decode, CLIP forward, backward or model evaluation follows it."""
    import comfy.model_management
    nodes = semantic_nodes()
    gradients = gradients_module()
    events, after_flag = [], []

    def flag(stage):
        events.append(stage)
        if stage == where:
            comfy.model_management.interrupt_current_processing(True)
            after_flag.append(len(events))

    original_gradient = nodes.SemanticGuidance.gradient
    original_decode = gradients._OwnedDecoder._decode
    original_features = open_clip_model().OpenCLIP.features

    def gradient(self, *args, **kwargs):
        flag("step start")
        return original_gradient(self, *args, **kwargs)

    def decode(self, *args, **kwargs):
        events.append("decode")
        out = original_decode(self, *args, **kwargs)
        flag("after decode")
        return out

    def features(self, *args, **kwargs):
        events.append("clip")
        embeddings, grams = original_features(self, *args, **kwargs)
        if embeddings.requires_grad:
            embeddings.register_hook(lambda g: events.append("backward"))
        flag("after clip")
        return embeddings, grams

    monkeypatch.setattr(nodes.SemanticGuidance, "gradient", gradient)
    monkeypatch.setattr(gradients._OwnedDecoder, "_decode", decode)
    monkeypatch.setattr(open_clip_model().OpenCLIP, "features", features)
    prompt = graphs.base()
    add_branch(prompt, "stop", VIT, guidance_inputs(cutouts=0, start_percent=0.3), steps=6)
    try:
        _, server = host.run(prompt, expect_success=False)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert any(event == "execution_interrupted" for event, _ in server.messages)
    assert after_flag, events
    assert events[after_flag[0]:] == [], events  # nothing ran after the flag
    evaluations = len(records["stop:before"])
    assert evaluations == 3  # steps 0-1 unguided (start 0.3 of 6), the flag inside step 2's guided evaluation
    assert "stop" not in harness.test_nodes_module().CAPTURED
