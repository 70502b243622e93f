"""Test-only nodes for the differentiable denoiser (nodes/gradients.DifferentiableDenoiser): a SAMPLER that
samples with plain Euler and, at one step, compares the denoiser with the sampler's own model call, and a
MODEL patch whose attention has no backward (to make the denoiser fall back)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.samplers

from .probes import pack_module

CATEGORY = "guided_synthesis_tests"


def _store():
    from . import CAPTURED
    return CAPTURED


def _directional_checks(model, denoiser, gradients, x, sigma, extra_args, step_size: float, directions: int,
                        seed: int) -> dict:
    """At (x, sigma): the denoiser's x0 against the sampler's ``model`` call, and d(sum(w*x0))/dx along random
    unit directions v against the sampler's own (no-grad) call by the fourth-order central difference
    (8 (f(h) - f(-h)) - (f(2h) - f(-2h))) / 12h, f(t) = sum(w * x0(x + t v))."""
    s_in = x.new_ones([x.shape[0]])
    reference = model(x, sigma * s_in, **extra_args)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(x.shape, generator=generator).to(x)
    with gradients.grad_enabled():
        xg = gradients.owned(x).requires_grad_(True)
        x0 = denoiser(xg, sigma)
        (grad,) = torch.autograd.grad((gradients.owned(weights) * x0).sum(), xg)
    rows = []
    for _ in range(directions):
        v = torch.randn(x.shape, generator=generator).to(x)
        v = v / v.norm()
        f = {t: float((weights * model(x + t * step_size * v, sigma * s_in, **extra_args)).double().sum())
             for t in (-2, -1, 1, 2)}
        rows.append({"analytic": float((grad.double() * v.double()).sum()),
                     "finite_difference": (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * step_size),
                     "identity": float((weights.double() * v.double()).sum())})
    return {"mode": denoiser.mode, "fallback_reason": denoiser.fallback_reason,
            "x0_max_diff": float((x0.detach() - reference).abs().max()),
            "x0_scale": float(reference.abs().max()),
            "grad_minus_weights": float((grad - weights).abs().max()),
            "directions": rows}


def _wrapped_layers(model) -> int:
    """Layers of the sampled model that still carry weight/bias functions (weight wrappers)."""
    return sum(1 for m in model.inner_model.inner_model.modules()
               if getattr(m, "weight_function", None) or getattr(m, "bias_function", None))


class DenoiserProbeSampler(io.ComfyNode):
    """A SAMPLER: Euler (as k-diffusion's sample_euler) that, before step ``probe_step``, runs the checks of
    :func:`_directional_checks` and stores them in CAPTURED[key]."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestDenoiserProbeSampler", display_name="Denoiser Probe Sampler (test)",
                         category=CATEGORY,
                         inputs=[io.String.Input("key", default="denoiser"),
                                 io.Int.Input("probe_step", default=2, min=0, max=1000),
                                 io.Float.Input("step_size", default=1e-2, min=1e-6, max=1.0, step=1e-6),
                                 io.Int.Input("directions", default=3, min=1, max=32),
                                 io.Int.Input("seed", default=0, min=0, max=2**31)],
                         outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, key, probe_step, step_size, directions, seed) -> io.NodeOutput:
        gradients = pack_module("nodes.toolkit.gradients")

        @torch.no_grad()
        def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
            extra_args = extra_args or {}
            s_in = x.new_ones([x.shape[0]])
            for i in range(len(sigmas) - 1):
                if i == probe_step:
                    with gradients.DifferentiableDenoiser(model, extra_args, "probe") as denoiser:
                        result = _directional_checks(model, denoiser, gradients, x, sigmas[i], extra_args, step_size,
                                                     directions, seed)
                    result["wrapped_layers_after"] = _wrapped_layers(model)
                    _store()[key] = result
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                if callback is not None:
                    callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
                x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            return x

        return io.NodeOutput(comfy.samplers.KSAMPLER(sample))


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this attention backend has no backward (test)")


def _no_backward_output(n, extra_options):
    return _NoBackward.apply(n)


class NoBackwardAttention(io.ComfyNode):
    """MODEL -> a clone whose self-attention output goes through an op without backward (as an attention
    backend without a backward kernel): forward unchanged, backward raises."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestNoBackwardAttention", display_name="No-Backward Attention (test)",
                         category=CATEGORY, inputs=[io.Model.Input("model")], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        patched = model.clone()
        patched.set_model_attn1_output_patch(_no_backward_output)
        return io.NodeOutput(patched)


NODES = [DenoiserProbeSampler, NoBackwardAttention]
