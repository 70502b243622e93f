"""Stroke Regions to Words on joint-attention transformers (Flux.1, SD3.5, Qwen-Image): the regions' phrase
tokens get the bias on the image-query x text-key block of every joint attention, through the host's own
attention override hook. Checked against a plain-torch oracle of the biased attention written here from
the method's definitions (docs/methods/regions.md), on the attention calls a foreign override records
during real executor runs of the tiny flow models."""
import math

import pytest
import torch
import torch.nn.functional as F

from devkit import harness
from devkit.tolerance import ORACLE, TWO_RUNS, assert_close_across_paths

PROMPT = "a red castle, a blue river"
# (text encoder, family) -> context rows of 'castle', of 'river', context length; hand-checked against
# docs/text_encoder_layouts.md. tiny_clip: BOS a red castle , a blue river EOS (77 tokens) for every family;
# Flux: T5 alone (padded to 256); SD3.5: CLIP rows then T5 rows from 77; Qwen-Image: the chat template's
# user text, 34 tokens cut off.
ROWS = {("tiny_clip", None): ([3], [7], 77), ("family", "flux_dev"): ([3], [8], 256),
        ("family", "sd35"): ([3, 80], [7, 85], 154), ("family", "qwen_image"): ([2], [6], 12)}


def rows_of(text_encoder: str, kind: str):
    return ROWS[(text_encoder, None if text_encoder == "tiny_clip" else kind)]


def regions_graph(kind: str, mode: str = "paint_with_words", strength: float = 1.0, cfg: float = 1.0,
                  text_encoder: str = "tiny_clip",
                  start_percent: float = 0.0, end_percent: float = 1.0, probe_after: bool = True,
                  probe_before: bool = False, spec: str = "red: castle\nblue: river", steps: int = 2) -> dict:
    model = ["ck", 0]
    prompt = {
        "ck": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": {"kind": kind, "seed": 0,
                                                                    "text_encoder": text_encoder}},
        "stroke": {"class_type": "GS_TestStrokePattern", "inputs": {"pattern": "halves", "width": 64, "height": 64}},
    }
    if probe_before:
        prompt["before"] = {"class_type": "GS_TestForeignAttentionOverride",
                            "inputs": {"model": model, "key": "before", "scale": 1.0, "max_records": 1000}}
        model = ["before", 0]
    prompt["regions"] = {"class_type": "GS_StrokeRegions", "inputs": {
        "model": model, "clip": ["ck", 1], "stroke": ["stroke", 0], "prompt": PROMPT, "region_spec": spec,
        "strength": strength, "mode": mode, "start_percent": start_percent, "end_percent": end_percent,
        "missing_phrases": "error"}}
    model = ["regions", 0]
    if probe_after:
        prompt["after"] = {"class_type": "GS_TestForeignAttentionOverride",
                           "inputs": {"model": model, "key": "after", "scale": 1.0, "max_records": 1000}}
        model = ["after", 0]
    prompt.update({
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "guided": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["regions", 1], "guidance": 3.5}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 3, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["guided", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "out": {"class_type": "GS_TestCapture", "inputs": {"key": "latent", "latent": ["sample", 0]}},
    })
    return prompt


def schedule_time(kind: str, sigma: float) -> float:
    """t of a sigma on the family's shifted flow schedule (the inverse of its shift formula)."""
    if kind in ("flux_dev", "qwen_image", "chroma"):  # exponential shift, mu = 1.15
        return 1.0 / (1.0 + math.exp(1.15) * (1.0 / sigma - 1.0))
    shift = {"sd35": 3.0, "flux_schnell": 1.0, "z_image": 3.0}[kind]
    return sigma / (shift - (shift - 1.0) * sigma)


def oracle(call: dict, kind: str, mode: str, strength: float, text_encoder: str = "tiny_clip") -> torch.Tensor:
    """The joint attention of one recorded call with the region bias on its positive rows, in float64."""
    q, k, v, heads = call["q"].double(), call["k"].double(), call["v"].double(), call["heads"]
    if not call["skip_reshape"]:
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    n_text, (h, w) = call["layout"]
    n_image = h * w
    scores = q @ k.transpose(-1, -2)  # [B, heads, L, L]
    scale = q.shape[-1] ** -0.5
    # the two regions of the 'halves' painting: red = left half (castle), blue = right half (river)
    left = torch.zeros(64, 64, dtype=torch.float64)
    left[:, :32] = 1
    masks = F.interpolate(torch.stack([left, 1 - left])[:, None], size=(h, w), mode="area")[:, 0].reshape(2, -1)
    castle, river, context = rows_of(text_encoder, kind)
    tokens = torch.zeros(2, context, dtype=torch.float64)
    tokens[0, castle], tokens[1, river] = 1, 1
    region_bias = torch.maximum(masks[0][:, None] * tokens[0], masks[1][:, None] * tokens[1])  # [hw, T]
    if n_text != context:  # the negative prompt's own batch (another length); the oracle biases no row of it
        assert 0 not in call["cond_or_uncond"]
    areas = masks.mean(1)
    kinds, sigmas = call["cond_or_uncond"], call["sigmas"].double().reshape(-1)
    chunk = q.shape[0] // len(kinds)
    for row in range(q.shape[0]):
        if kinds[row // chunk] != 0:
            continue  # the negative prompt's rows are never biased
        sigma = float(sigmas[row] if sigmas.numel() == q.shape[0] else sigmas[0])
        block = scores[row, :, n_text:n_text + n_image, :n_text]
        if mode == "paint_with_words":
            weight = strength * math.log1p(sigma) * max(float(block.max()), 0.0)
            block += weight * region_bias
        else:
            t = schedule_time(kind, sigma)
            factor = (strength * t ** 5 if t >= 0.7 else 0.0) * (masks.T @ (1 - areas))[:, None]  # [hw, 1]
            f_in = factor * region_bias
            f_out = factor - f_in
            row_max, row_min = block.amax(-1, keepdim=True), block.amin(-1, keepdim=True)
            block += f_in * (row_max - block) - f_out * (block - row_min)
    out = torch.softmax(scores * scale, dim=-1) @ v
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def joint_calls(captured, key: str = "after") -> list[dict]:
    calls = [c for c in captured[key] if c["layout"] is not None]
    assert calls, "no joint attention call was recorded"
    return calls


@pytest.mark.parametrize("kind, text_encoder, mode, cfg", [
    ("flux_dev", "tiny_clip", "paint_with_words", 1.0), ("flux_dev", "family", "paint_with_words", 1.0),
    ("sd35", "family", "paint_with_words", 3.0), ("qwen_image", "family", "paint_with_words", 2.0),
    ("flux_dev", "family", "dense", 1.0)])
def test_joint_attention_matches_the_oracle(host, captured, kind, text_encoder, mode, cfg):
    host.run(regions_graph(kind, mode=mode, cfg=cfg, text_encoder=text_encoder))
    calls = joint_calls(captured)
    if kind.startswith("flux"):
        assert {c["block"][0] for c in calls} == {"double", "single"}  # both block kinds of Flux are biased
    biased = 0
    for call in calls:
        expected = oracle(call, kind, mode, 1.0, text_encoder)
        assert_close_across_paths(call["out"].double(), expected, rtol=1e-4, why=ORACLE)
        if 0 in call["cond_or_uncond"]:
            assert call["layout"] == (rows_of(text_encoder, kind)[2], (4, 4))
        plain = oracle(call, kind, mode, 0.0, text_encoder)
        biased += int(not torch.allclose(expected, plain, rtol=1e-3, atol=1e-6))
    assert biased, "the oracle never differs from plain attention: the test would not see a missing bias"
    if cfg > 1:
        assert {0, 1} <= {kind for c in calls for kind in c["cond_or_uncond"]}


def test_the_negative_rows_are_the_unpatched_attention(host, captured):
    host.run(regions_graph("sd35", cfg=3.0))
    for call in joint_calls(captured):
        plain = oracle(call, "sd35", "paint_with_words", 0.0)
        kinds = call["cond_or_uncond"]
        chunk = call["q"].shape[0] // len(kinds)
        for c, kind in enumerate(kinds):
            if kind == 1:
                rows = slice(c * chunk, (c + 1) * chunk)
                assert_close_across_paths(call["out"][rows].double(), plain[rows], rtol=1e-4, why=ORACLE)


def test_a_foreign_override_keeps_being_called_and_strength_zero_is_the_unpatched_model(host, captured):
    host.run(regions_graph("flux_dev", probe_before=True, probe_after=False))
    probes = harness.loaded_module("gs_test_nodes.regions_probes")
    assert probes.CALLS["before"] > 0
    # the earlier override is called with the region bias as its attention mask
    masks = [c["mask"] for c in captured["before"] if c["mask"] is not None]
    assert masks and any(float(m.abs().max()) > 0 for m in masks)
    host.run(regions_graph("flux_dev", strength=0.0, probe_after=False))
    strength_zero = captured["latent"].clone()
    host.run(regions_graph("flux_dev", spec="", probe_after=False))
    # both leave the model as it is: two runs of the same unpatched computation
    assert_close_across_paths(strength_zero, captured["latent"], rtol=1e-5, why=TWO_RUNS)


def test_outside_the_sigma_window_nothing_is_biased(host, captured):
    host.run(regions_graph("flux_dev", start_percent=0.99, end_percent=1.0, steps=2))
    for call in joint_calls(captured):
        assert_close_across_paths(call["out"].double(), oracle(call, "flux_dev", "paint_with_words", 0.0),
                                  rtol=1e-4, why=ORACLE)


def test_a_model_without_joint_or_cross_attention_is_refused_by_name(host):
    prompt = regions_graph("z_image", probe_after=False)
    with pytest.raises(Exception, match="Flux.1, SD3.5 and Qwen-Image"):
        host.run(prompt)
