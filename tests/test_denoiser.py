"""The differentiable denoiser (nodes/gradients.DifferentiableDenoiser) inside a real sampling run.

GS_TestDenoiserProbeSampler samples with Euler through SamplerCustom and, at one step, compares the
denoiser with the sampler's own model call (devkit/host_nodes/gs_test_nodes/denoiser_probes.py).

Finite differences: f(t) = sum(w * x0(x + t v)) for standard normal w and unit directions v, so the
derivatives are of size about 1; fourth-order central difference with step h = 0.4 (latent norm units; x has
128 elements of size up to about 46 here). fp32 rounding of f is about 1e-5, which the stencil amplifies
about 2.4x at this h, and its h^4 truncation term is about 1e-4 (h = 0.2 and 0.4 agree to 2e-4); measured
errors are up to 2e-4. The tolerance, 1e-3 x max(|derivative|, 1), is 5x above that, and the identity
Jacobian (no UNet gradient) misses by more than 5x the tolerance: the comparison can fail.
"""
import pytest
import torch

from devkit import graphs
from devkit.tolerance import PATHS, assert_close_across_paths

STEP_SIZE = 0.4
TOLERANCE = 1e-3  # x max(|derivative|, 1)


def tolerance(row: dict) -> float:
    return TOLERANCE * max(abs(row["finite_difference"]), 1.0)


def sampling_prompt(sampler: str, variant: str = "plain", fingerprint: bool = False) -> dict:
    """Tiny SD1.5, 32x32 latent batch 2, 8 'normal' steps, cfg 5, through SamplerCustom with ``sampler``
    ('probe' or plain Euler). Variants: 'post-CFG patch' (RescaleCFG, a sampler_post_cfg_function),
    'noise mask' (an inpainting run: KSamplerX0Inpaint multiplies x by the inference noise mask),
    'no backward' (an attention op without backward)."""
    prompt = graphs.base()
    model = ["1", 0]
    if variant == "post-CFG patch":
        prompt["41"] = {"class_type": "RescaleCFG", "inputs": {"model": model, "multiplier": 0.7}}
        model = ["41", 0]
    if variant == "no backward":
        prompt["41"] = {"class_type": "GS_TestNoBackwardAttention", "inputs": {"model": model}}
        model = ["41", 0]
    latent = graphs.empty_latent(prompt, "30", batch=2)
    if variant == "noise mask":
        graphs.strokes(prompt, "36")
        prompt["37"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": latent, "mask": ["36", 1]}}
        latent = ["37", 0]
    if sampler == "probe":
        prompt["40"] = {"class_type": "GS_TestDenoiserProbeSampler", "inputs": {
            "key": "denoiser", "probe_step": 3, "step_size": STEP_SIZE, "directions": 4, "seed": 0}}
    else:
        graphs.ksampler_select(prompt, "40")
    sigmas = graphs.basic_scheduler(prompt, "31", 8, model=model)
    out = graphs.sampler_custom(prompt, "34", ["40", 0], sigmas, latent, 7, model=model)
    graphs.capture(prompt, "35", sampler, latent=out)
    if fingerprint:
        prompt["20"] = {"class_type": "VAEEncode", "inputs": {"pixels": graphs.solid_image(prompt, "21"),
                                                              "vae": ["1", 2]}}
        prompt["22"] = {"class_type": "GS_TestFingerprint", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "latent": ["20", 0], "after": ["34", 0]}}
    return prompt


def probe_and_plain(host, captured, variant: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(the probe's results, its sampled latent, plain Euler's latent) for the same graph."""
    host.run(sampling_prompt("probe", variant))
    result, probed = captured["denoiser"], captured["probe"]
    host.run(sampling_prompt("plain", variant))
    return result, probed, captured["plain"]


@pytest.mark.parametrize("variant", ["plain", "post-CFG patch", "noise mask"])
def test_x0_equals_the_samplers_denoised_and_its_gradient_the_finite_difference(host, captured, caplog, variant):
    caplog.set_level("INFO")
    result, probed, plain = probe_and_plain(host, captured, variant)
    assert result["mode"] == "unet" and result["fallback_reason"] is None
    assert "gradients flow through the UNet" in caplog.text
    assert result["x0_max_diff"] <= 1e-5
    for row in result["directions"]:
        assert abs(row["analytic"] - row["finite_difference"]) <= tolerance(row), row
    # the UNet's Jacobian matters: without it the gradient misses by far more than the tolerance
    assert max(abs(r["identity"] - r["finite_difference"]) / tolerance(r) for r in result["directions"]) > 5
    print(f"\n{variant}: " + "; ".join(f"analytic {r['analytic']:.6f} fd {r['finite_difference']:.6f} "
                                        f"identity {r['identity']:.6f}" for r in result["directions"]))
    # the MODEL is reloaded as it was: no weight wrappers left, and the run samples as plain Euler does
    assert result["wrapped_layers_after"] == 0
    assert_close_across_paths(probed, plain, rtol=1e-5, why=PATHS)


def test_model_and_vae_are_unchanged(host, captured):
    def fingerprint(sampler):
        result, _ = host.run(sampling_prompt(sampler, fingerprint=True))
        return result["outputs"]["22"]["gs_fingerprint"][0]

    after_denoiser = fingerprint("probe")
    assert after_denoiser["weight_wrappers"] == 0
    assert after_denoiser == fingerprint("plain")


def test_a_model_without_backward_falls_back_to_the_identity_jacobian_with_a_warning(host, captured, caplog):
    caplog.set_level("INFO")
    result, probed, plain = probe_and_plain(host, captured, "no backward")
    assert result["mode"] == "identity"
    assert "has no backward (test)" in result["fallback_reason"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("no gradient through this model's UNet" in m and "identity Jacobian" in m for m in warnings)
    assert result["x0_max_diff"] == 0.0  # the value is the sampler's x0 exactly
    assert result["grad_minus_weights"] == 0.0  # d sum(w x0) / dx = w: the identity Jacobian
    for row in result["directions"]:
        assert row["analytic"] == pytest.approx(row["identity"], rel=1e-9, abs=1e-9)
    assert result["wrapped_layers_after"] == 0
    assert_close_across_paths(probed, plain, rtol=1e-5, why=PATHS)
