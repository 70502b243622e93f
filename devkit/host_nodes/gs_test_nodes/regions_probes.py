"""Test-only nodes for region-token attention: stroke patterns, attention-mass probes inside the
UNet, and a foreign attn2 replace patch (to prove ours composes with it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.samplers

CATEGORY = "guided_synthesis_tests"
CALLS: dict[str, int] = {}


def _store():
    from . import CAPTURED
    return CAPTURED


def _sites(model):
    from .probes import pack_module
    return pack_module("nodes.regions").cross_attention_sites(model)


def _existing(model, site):
    table = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    return table.get(site, table.get(site[:2]))


def _plain(q, k, v, extra):
    return comfy_attention.optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                               transformer_options=extra)



def evaluate_once(model, positive, negative, samples, sigma: float, seed: int, cfg: float = 5.0) -> None:
    """One CFG model evaluation at ``sigma`` through a real CFGGuider (its patches and hooks run), on seeded noise."""
    def one_step(model_fn, x, sigmas, extra_args=None, callback=None, disable=None):
        return model_fn(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(seed))
    guider.sample(noise, samples, comfy.samplers.KSAMPLER(one_step), torch.tensor([float(sigma), 0.0]), seed=seed)

class StrokePattern(io.ComfyNode):
    """A synthetic stroke painting: 'halves' (red left, blue right) or 'square' (a red square on blue)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestStrokePattern", display_name="Stroke Pattern (test)", category=CATEGORY,
                         inputs=[io.Combo.Input("pattern", options=["halves", "square"], default="halves"),
                                 io.Int.Input("width", default=64, min=8, max=1024),
                                 io.Int.Input("height", default=64, min=8, max=1024)],
                         outputs=[io.Image.Output(), io.Mask.Output()])

    @classmethod
    def execute(cls, pattern, width, height) -> io.NodeOutput:
        mask = torch.zeros(height, width)
        if pattern == "halves":
            mask[:, : width // 2] = 1
        else:
            mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1
        red, blue = torch.tensor([0.85, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.8])
        image = mask[..., None] * red + (1 - mask[..., None]) * blue
        return io.NodeOutput(image.unsqueeze(0), mask.unsqueeze(0))


class ForeignAttn2(io.ComfyNode):
    """Another pack's attn2 replace patch (as IPAdapter installs them): counts its calls and scales
    its attention output by ``scale`` on every row."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestForeignAttn2", display_name="Foreign Attn2 Patch (test)", category=CATEGORY,
                         inputs=[io.Model.Input("model"), io.String.Input("key", default="foreign"),
                                 io.Float.Input("scale", default=1.0, min=0.0, max=10.0),
                                 io.Boolean.Input("short_keys", default=False)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, key, scale, short_keys) -> io.NodeOutput:
        patched = model.clone()
        CALLS[key] = 0

        def patch(q, k, v, extra):
            CALLS[key] += 1
            return _plain(q, k, v, extra) * scale

        for site in _sites(model):
            if short_keys:
                patched.set_model_attn2_replace(patch, site[0], site[1])
            else:
                patched.set_model_attn2_replace(patch, site[0], site[1], site[2])
        return io.NodeOutput(patched)


class RegionAttentionProbe(io.ComfyNode):
    """One CFG model evaluation at ``sigma``; captures the cond/uncond predictions and, per
    cross-attention site, the attention mass on ``tokens`` inside ``mask`` (area-weighted) and in the cells
    that ``mask`` does not touch at all, for the
    positive and negative rows (CAPTURED[key + '_mass']: [sites, 2 (cond, uncond), 2 (in, out)])."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestRegionAttentionProbe", display_name="Region Attention Probe (test)",
                         category=CATEGORY, is_output_node=True,
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"),
                                 io.Conditioning.Input("negative"), io.Latent.Input("latent"), io.Mask.Input("mask"),
                                 io.String.Input("tokens"), io.String.Input("key", default="probe"),
                                 io.Float.Input("sigma", default=5.0, min=0.0, max=100.0),
                                 io.Int.Input("seed", default=0, min=0, max=2**31)],
                         outputs=[])

    @classmethod
    def execute(cls, model, positive, negative, latent, mask, tokens, key, sigma, seed) -> io.NodeOutput:
        positions = [int(t) for t in tokens.split(",") if t.strip()]
        region = mask.reshape(-1, *mask.shape[-2:])[0].float()
        probe = model.clone()
        sites = _sites(model)
        masses: dict[tuple, list] = {site: [] for site in sites}

        def make(site, inner):
            def wrapper(q, k, v, extra):
                call = inner if inner is not None else _plain
                length = 77 * max(1, (max(positions) // 77) + 1)
                v_probe = torch.zeros_like(v)
                for start in range(0, k.shape[1], length):
                    v_probe[:, [start + p for p in positions if start + p < k.shape[1]], :] = 1.0
                mass = call(q, k, v_probe, extra).float().mean(-1)  # [B, Lq]: mean over heads
                h, w = extra["activations_shape"][-2:]
                m = F.interpolate(region[None, None], size=(h, w), mode="area").reshape(-1).to(mass.device)
                kinds = extra["cond_or_uncond"]
                chunk = q.shape[0] // len(kinds)
                row = torch.zeros(2, 2)
                for c, kind in enumerate(kinds):
                    rows = mass[c * chunk:(c + 1) * chunk]
                    row[kind, 0] = (rows * m).sum() / (m.sum() * chunk)
                    strictly_outside = (m < 1e-6).float()  # cells with no part of the region
                    row[kind, 1] = (rows * strictly_outside).sum() / (strictly_outside.sum() * chunk)
                masses[site].append(row)
                return call(q, k, v, extra)
            return wrapper

        for site in sites:
            probe.set_model_attn2_replace(make(site, _existing(model, site)), *site)
        captured = {}

        def post_cfg(args):
            captured["cond"] = args["cond_denoised"].detach().clone().cpu()
            captured["uncond"] = args["uncond_denoised"].detach().clone().cpu()
            return args["denoised"]

        probe.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)

        evaluate_once(probe, positive, negative, latent["samples"], sigma, seed)
        store = _store()
        store[key + "_mass"] = torch.stack([torch.stack(masses[s]).mean(0) for s in sites])
        store[key + "_cond"] = captured["cond"]
        store[key + "_uncond"] = captured["uncond"]
        comfy.model_management.soft_empty_cache()
        return io.NodeOutput(ui={"gs_probe": [{"key": key, "sites": len(sites)}]})


class ForeignAttentionOverride(io.ComfyNode):
    """Another pack's ``optimized_attention_override`` (the hook diffusion transformers call for every
    attention): wraps the override already on the model, records each joint-attention call (its inputs, the
    transformer options the oracle needs and the output) under CAPTURED[key] and multiplies the output by
    ``scale``. Placed after Stroke Regions to Words it sees the model's own q/k/v and the regions' result;
    placed before, the regions override has to keep calling it."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="GS_TestForeignAttentionOverride", display_name="Foreign Attention Override (test)",
                         category=CATEGORY,
                         inputs=[io.Model.Input("model"), io.String.Input("key", default="override"),
                                 io.Float.Input("scale", default=1.0, min=0.0, max=10.0),
                                 io.Int.Input("max_records", default=4, min=0, max=1000)],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, key, scale, max_records) -> io.NodeOutput:
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        previous = options.get("optimized_attention_override")
        store = _store()
        store[key] = []
        CALLS[key] = 0

        def override(func, *args, **kwargs):
            CALLS[key] += 1
            out = previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
            opts = kwargs.get("transformer_options") or {}
            layout = opts.get("guided_synthesis_regions_layout")
            if len(store[key]) < max_records:
                names = ("q", "k", "v", "heads", "mask")
                call = dict(zip(names, args))
                call.update({n: kwargs[n] for n in names if n in kwargs})
                store[key].append({
                    "q": call["q"].detach().cpu().clone(), "k": call["k"].detach().cpu().clone(),
                    "v": call["v"].detach().cpu().clone(), "heads": int(call["heads"]),
                    "mask": None if call.get("mask") is None else call["mask"].detach().cpu().clone(),
                    "skip_reshape": bool(kwargs.get("skip_reshape", False)),
                    "skip_output_reshape": bool(kwargs.get("skip_output_reshape", False)),
                    "layout": layout, "cond_or_uncond": list(opts.get("cond_or_uncond") or []),
                    "sigmas": None if opts.get("sigmas") is None else opts["sigmas"].detach().cpu().clone(),
                    "block": (opts.get("block_type"), opts.get("block_index")),
                    "out": out.detach().cpu().clone()})
            return out * scale if scale != 1.0 else out

        options["optimized_attention_override"] = override
        return io.NodeOutput(patched)


NODES = [StrokePattern, ForeignAttn2, RegionAttentionProbe, ForeignAttentionOverride]
