"""Test-only probe for the oracle tests: records what every cross-attention (attn2) call of a MODEL receives and
returns during one CFG model evaluation, so a test can recompute the attention from a formula."""
from __future__ import annotations

from comfy_api.latest import io

import comfy.model_management
import comfy.samplers

from .regions_probes import _existing, _plain, _sites, evaluate_once

CATEGORY = "guided_synthesis_tests"


class TinyModelAndVAE(io.ComfyNode):
    """GS_TestTinyCheckpoint without the text encoder (whose 49408 x 768 random embedding costs ~0.5 s per run): the
    same seeded MODEL (output 0) and VAE (output 2); output 1 is None. For graphs that use random conditionings."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestTinyModelVAE", display_name="Tiny Model + VAE (test)", category=CATEGORY,
                         inputs=[io.Combo.Input("kind", options=["sd15", "sd2_v", "sdxl"], default="sd15"),
                                 io.Int.Input("seed", default=0, min=0, max=2**31),
                                 io.Combo.Input("vae_kind", options=["taesd", "kl"], default="taesd", optional=True)],
                         outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()])

    @classmethod
    def execute(cls, kind, seed, vae_kind="taesd") -> io.NodeOutput:
        from . import tiny
        vae = tiny.tiny_kl_vae(seed) if vae_kind == "kl" else tiny.tiny_vae(seed)
        return io.NodeOutput(tiny.tiny_model(kind, seed), None, vae)


class AttentionCapture(io.ComfyNode):
    """One CFG evaluation (cfg 5) of ``model`` at ``sigma`` on ``latent`` + seeded noise. Per attn2 call:
    CAPTURED[key] gets a list of dicts {site, q, k, v, out, cond_or_uncond, sigmas, n_heads, activations_shape}; the
    call itself goes to whatever the model has at that site (a patch already installed, else plain attention)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestAttentionCapture", display_name="Attention Capture (test)",
                         category=CATEGORY, is_output_node=True,
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"),
                                 io.Conditioning.Input("negative"), io.Latent.Input("latent"),
                                 io.String.Input("key", default="attention"),
                                 io.Float.Input("sigma", default=6.0, min=0.0, max=100.0),
                                 io.Int.Input("seed", default=0, min=0, max=2**31)],
                         outputs=[])

    @classmethod
    def execute(cls, model, positive, negative, latent, key, sigma, seed) -> io.NodeOutput:
        from . import CAPTURED

        probe = model.clone()
        calls: list[dict] = []

        def make(site, inner):
            def wrapper(q, k, v, extra):
                out = (inner if inner is not None else _plain)(q, k, v, extra)
                calls.append({"site": site, "q": q.detach().float().cpu().clone(), "k": k.detach().float().cpu().clone(),
                              "v": v.detach().float().cpu().clone(), "out": out.detach().float().cpu().clone(),
                              "cond_or_uncond": list(extra["cond_or_uncond"]), "n_heads": extra["n_heads"],
                              "sigmas": extra["sigmas"].detach().float().cpu().clone(),
                              "activations_shape": list(extra.get("activations_shape") or [])})
                return out
            return wrapper

        for site in _sites(model):
            probe.set_model_attn2_replace(make(site, _existing(model, site)), *site)

        evaluate_once(probe, positive, negative, latent["samples"], sigma, seed)
        CAPTURED[key] = calls
        comfy.model_management.soft_empty_cache()
        return io.NodeOutput(ui={"gs_attention": [{"key": key, "calls": len(calls)}]})


NODES = [TinyModelAndVAE, AttentionCapture]
