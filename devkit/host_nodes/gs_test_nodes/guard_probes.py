"""Test nodes for the guided-step guard (nodes/toolkit/guard.py): a tiny 16-channel flow VAE whose decoder
plants a bad gradient. Its forward is the plain tiny flow VAE's (VAEDecode gives the very same picture); the
backward through it, which every loss decoder copy of it inherits, multiplies the gradient by ``inf`` (a
non-finite gradient) or by 1e30 (finite, but a step built on it overflows)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from . import tiny_flow

CATEGORY = "guided_synthesis_tests"
FACTORS = {"inf": float("inf"), "huge": 1.0e30}


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, factor):
        ctx.factor = factor
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class _PoisonedDecoder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, factor: float):
        super().__init__()
        self.inner, self.factor = inner, float(factor)

    def forward(self, z, **kwargs):
        return self.inner(_ScaleGradient.apply(z, self.factor), **kwargs)


class PoisonedFlowVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestPoisonedFlowVAE", display_name="Poisoned Flow VAE (test)", category=CATEGORY,
                         inputs=[io.Combo.Input("gradient", options=list(FACTORS), default="inf"),
                                 io.Int.Input("seed", default=0, min=0, max=2**31)],
                         outputs=[io.Vae.Output()])

    @classmethod
    def execute(cls, gradient="inf", seed=0) -> io.NodeOutput:
        vae = tiny_flow.tiny_flow_vae(seed)  # a fresh VAE: nothing shared is changed
        model = vae.first_stage_model
        with torch.inference_mode(False):
            model.decoder = _PoisonedDecoder(model.decoder, FACTORS[gradient])
        return io.NodeOutput(vae)


NODES = [PoisonedFlowVAE]
