"""CLIP semantic guidance on the tiny flow transformers (devkit/host_nodes/gs_test_nodes/tiny_flow.py), through the
real executor, and the guided-step guard shared with GradOP+ (nodes/toolkit/guard.py): no silent NaN.

- One guided step on tiny Flux.1 dev (cfg 1: no unconditional pass) and tiny SD3.5 (cfg 2), both step modes,
  against a plain-torch oracle written here (no guidance/ or nodes/ code).
- CLIP guidance on Flux.1 schnell, SD3.5 and Z-Image.
- A planted bad gradient (test node GS_TestPoisonedFlowVAE) makes the guided run end as the unguided one, with one
  warning in the log and on the sampling node.
- The tiny SD3.5's pos_embed buffer (torch.empty in ComfyUI) is defined whatever memory it was given.
"""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from devkit import graphs, harness
from devkit.tolerance import FORMULA, ORACLE, PATHS, assert_close_across_paths

VIT = {"architecture": "GS-Test-Tiny-ViT", "checkpoint": "gs_tiny_vit.safetensors"}
TEXT = "a red castle"
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# process_out of the real latent formats: raw = x / scale + shift (Flux.1: 0.3611, 0.1159; SD3: 1.5305, 0.0609)
LATENT_SCALE_SHIFT = {"flux_dev": (0.3611, 0.1159), "flux_schnell": (0.3611, 0.1159), "sd35": (1.5305, 0.0609),
                      "z_image": (0.3611, 0.1159)}
GUARD_WARNING = "would have made the result non-finite or absurdly large"
SKIP_WARNING = "the loss gradient is not finite"


def is_cfg_model(kind: str) -> bool:
    return not kind.startswith("flux")


def flow_prompt(kind: str, guide: dict | None, cfg: float, steps: int = 3, vae: str = "ck", seed: int = 1) -> dict:
    """Tiny flow checkpoint -> recorder 'before' -> CLIP Semantic Guidance -> recorder 'after' -> KSampler
    (euler, simple) -> captured latent 'latent'. ``guide`` None: the unpatched model. ``vae``: the node whose
    output 0 (or the checkpoint's output 2) is the VAE."""
    prompt = graphs.flow_txt2img(kind, seed=seed, steps=steps, cfg=cfg)
    del prompt["decode"], prompt["out_latent"]
    prompt["out"] = {"class_type": "GS_TestCapture", "inputs": {"key": "latent", "latent": ["sample", 0]}}
    vae_output = ["ck", 2] if vae == "ck" else [vae, 0]
    if guide is not None:
        prompt["clip"] = {"class_type": "GS_OpenCLIPLoader", "inputs": {
            **VIT, "precision": "fp32", "download": False, "pretrained": "laion2b_s34b_b79k"}}
        prompt["before"] = {"class_type": "GS_TestPostCFGRecorder", "inputs": {"model": ["ck", 0], "key": "before"}}
        prompt["guide"] = {"class_type": "GS_CLIPSemanticGuidance", "inputs": {
            "model": ["before", 0], "vae": vae_output, "clip_model": ["clip", 0], "text": TEXT, "text_weight": 0.3,
            "image_weight": 0.0, "image_loss": "content", "cutouts": 0, "start_percent": 0.0, "end_percent": 1.0,
            "every": 1, "decoder": "auto", "step_mode": "normalised", **guide}}
        prompt["after"] = {"class_type": "GS_TestPostCFGRecorder", "inputs": {"model": ["guide", 0], "key": "after"}}
        prompt["sample"]["inputs"]["model"] = ["after", 0]
    return prompt


@pytest.fixture
def records():
    store = harness.test_nodes_module().semantic_probes.RECORDS
    store.clear()
    return store


# --- the plain-torch oracle of one guided step ---------------------------------------------------------------


def grad_capable_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float copy of ``module`` whose weights are normal tensors (the host built them in inference mode)."""
    module = copy.deepcopy(module).float()
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = b.detach().clone()
    return module


def oracle_step(kind: str, record: dict, weight: float, mode: str) -> torch.Tensor:
    """The guided x0 of one step, from the formulas: g = d/dx0 of weight * angle^2 / 2 between
    CLIP(resize(clamp((decode(x0 / scale + shift) + 1) / 2, 0, 1))) and CLIP(TEXT);
    normalised: x0 - weight * g / rms(g) * r, r = rms(cond - uncond) with a CFG pass, else rms(x - x0) (the
    predicted noise's size; cfg 1 runs no unconditional pass); paper: x0 - (sigma / (1 - sigma))^2 * g (the flow
    sample x = (1 - sigma) x0 + sigma eps divided by 1 - sigma is a VE sample of sigma_ve = sigma / (1 - sigma))."""
    import open_clip
    probes = harness.test_nodes_module()
    scale, shift = LATENT_SCALE_SHIFT[kind]
    with torch.inference_mode(False):
        decoder = grad_capable_copy(probes.tiny_flow.tiny_flow_vae(0).first_stage_model)
        model = probes.semantic_probes.tiny_open_clip("vit", 0)
        text = model.encode_text(open_clip.get_tokenizer("GS-Test-Tiny-ViT")([TEXT])).float().detach()
        x0 = record["denoised"].clone().float().requires_grad_(True)
        image = ((decoder.decode(x0 / scale + shift) + 1.0) / 2.0).clamp(0.0, 1.0)
        pixels = F.interpolate(image, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
        embedding = model.encode_image((pixels - mean) / std).float()
        cosine = (embedding * text).sum(-1) / (embedding.norm(dim=-1) * text.norm(dim=-1))
        loss = (weight * torch.arccos(cosine.clamp(-1, 1)) ** 2 / 2).sum()
        (grad,) = torch.autograd.grad(loss, x0)
    denoised = record["denoised"].float()
    if mode == "paper":
        sigma = float(record["sigma"].reshape(-1)[0])
        return denoised - (sigma / (1.0 - sigma)) ** 2 * grad
    rms = lambda t: t.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)  # noqa: E731
    correction = (record["cond_denoised"] - record["uncond_denoised"] if is_cfg_model(kind)
                  else record["input"] - denoised)
    return denoised - weight * grad / rms(grad) * rms(correction)


# A step from the node vs the oracle: the same decoder, CLIP and backward in another module copy and operation
# order (arccos of the cosine vs 2 arcsin of the half chord). The step is read as x0 - x0', so it carries x0's
# own fp32 rounding (x0 about 5-8 here): the bound is rtol on the step plus 1e-5 of max |x0|. Measured (2-core
# Xeon): at most 1.4e-7 of max |x0| (normalised steps, about 0.2 of x0; 7e-7 of the step) and 2.3e-8 (paper
# steps, 5e-4 of x0); a raw sigma^2 in the paper step (6.6x too small at sigma 0.61) or rms(x0) as the cfg-1
# reference are far outside it (both planted in tests/oracles/plant_bugs.py).
STEP_RTOL = 1e-4
X0_ROUNDING = 1e-5


@pytest.mark.parametrize("kind, cfg, mode", [("flux_dev", 1.0, "normalised"), ("flux_dev", 1.0, "paper"),
                                             ("sd35", 2.0, "normalised"), ("sd35", 2.0, "paper")])
def test_one_clip_step_on_a_flow_model_equals_a_plain_torch_oracle(host, clip_guidance, records, caplog, kind, cfg,
                                                                   mode):
    """Every step of a 3-step run: the node's guided x0 equals the oracle's; the paper step at sigma 1 (pure
    noise, sigma_ve infinite) is left unguided with one warning."""
    weight = 0.3
    with caplog.at_level(logging.WARNING):
        host.run(flow_prompt(kind, {"text_weight": weight, "step_mode": mode}, cfg))
    before, after = records["before"], records["after"]
    assert len(before) == len(after) == 3
    guided = 0
    for step, (b, a) in enumerate(zip(before, after)):
        sigma = float(b["sigma"].reshape(-1)[0])
        if mode == "paper" and sigma >= 1.0:
            assert torch.equal(a["denoised"], b["denoised"])  # the very tensor handed on: exact
            continue
        expected = oracle_step(kind, b, weight, mode)
        step_got, step_expected = b["denoised"] - a["denoised"], b["denoised"] - expected
        assert float(step_expected.abs().max()) > 0
        assert_close_across_paths(step_got, step_expected, rtol=STEP_RTOL, atol_fraction=X0_ROUNDING,
                                  scale=float(b["denoised"].abs().max()), why=ORACLE, what=f"step {step}")
        guided += 1
    assert guided == (2 if mode == "paper" else 3)
    paper_warnings = [r for r in caplog.records if "undefined at sigma 1" in r.getMessage()]
    assert len(paper_warnings) == (1 if mode == "paper" else 0)
    assert not [r for r in caplog.records if GUARD_WARNING in r.getMessage()]


@pytest.mark.parametrize("kind, cfg", [("flux_schnell", 1.0), ("sd35", 3.0), ("z_image", 2.0), ("chroma", 3.0)])
def test_clip_guidance_runs_on_flow_families(host, clip_guidance, captured, records, caplog, kind, cfg):
    """Both step modes guide every family's run (the latent moves, stays finite, no guard fallback)."""
    latents = {}
    with caplog.at_level(logging.WARNING):
        for mode in ("normalised", "paper"):
            host.run(flow_prompt(kind, {"step_mode": mode, "start_percent": 0.2}, cfg))
            latents[mode] = captured["latent"]
        host.run(flow_prompt(kind, None, cfg))
    for mode, latent in latents.items():
        assert bool(torch.isfinite(latent).all()), mode
        assert float((latent - captured["latent"]).abs().max()) > 1e-4 * float(captured["latent"].abs().max()), mode
    assert not [r for r in caplog.records if GUARD_WARNING in r.getMessage() or SKIP_WARNING in r.getMessage()]


# --- the guard: a planted bad gradient never reaches the picture --------------------------------------------


def progress_texts(server) -> list[dict]:
    return [data for event, data in server.messages if event == "progress_text"]


@pytest.mark.parametrize("gradient, mode, warning", [("huge", "paper", GUARD_WARNING),
                                                     ("inf", "normalised", SKIP_WARNING)])
def test_a_bad_clip_gradient_leaves_the_run_unguided_with_one_warning(host, clip_guidance, captured, caplog,
                                                                      gradient, mode, warning):
    """huge: the loss gradient is finite (1e30 times the true one) but the paper step built on it is absurd, so
    the guard falls back on the unguided x0; inf: the gradient is not finite, the loss scaler skips the step.
    Either way the run ends as the unguided run, one warning is logged and shown on the KSampler node."""
    prompt = flow_prompt("flux_dev", {"step_mode": mode, "start_percent": 0.2}, 1.0, vae="poison")
    prompt["poison"] = {"class_type": "GS_TestPoisonedFlowVAE", "inputs": {"gradient": gradient, "seed": 0}}
    with caplog.at_level(logging.WARNING):
        _, server = host.run(prompt)
    guided = captured["latent"]
    host.run(flow_prompt("flux_dev", None, 1.0))
    # every guided step fell back on the very unguided x0, so the calls are the same (stated bound: fp32 rtol)
    assert_close_across_paths(guided, captured["latent"], rtol=1e-5, why=PATHS)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and warning in r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith("CLIP Semantic Guidance: "), messages
    texts = progress_texts(server)
    assert [t["node"] for t in texts] == ["sample"] and warning in texts[0]["text"], texts


def gradop_prompt(grad_steps: int) -> dict:
    prompt = {
        "ck": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": {"kind": "flux_dev", "seed": 0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill", "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "poison": {"class_type": "GS_TestPoisonedFlowVAE", "inputs": {"gradient": "inf", "seed": 0}},
        "strokes": {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}},
        "gradop": {"class_type": "GS_GradOPPlus", "inputs": {
            "model": ["ck", 0], "positive": ["pos", 0], "negative": ["neg", 0], "seed": 1, "steps": 4, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "vae": ["poison", 0], "strokes": ["strokes", 0],
            "strength": 0.8, "iterative_steps": 2, "grad_steps": grad_steps, "learning_rate": 0.1,
            "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full", "mode": "GradOP+",
            "gamma": 0.001, "width": 0, "height": 0, "batch_size": 1}},
        "out": {"class_type": "GS_TestCapture", "inputs": {"key": "latent", "latent": ["gradop", 0]}},
    }
    return prompt


def test_a_non_finite_gradop_gradient_leaves_the_run_unguided_with_one_warning(host, captured, caplog):
    """GradOP+ on tiny Flux.1 dev with a decoder whose gradient is inf: every Adam step is skipped, so no
    iteration is applied (no re-noise either) and the result is the grad_steps = 0 run's; one warning, shown on
    the GradOP+ node."""
    with caplog.at_level(logging.WARNING):
        _, server = host.run(gradop_prompt(2))
    guided = captured["latent"]
    host.run(gradop_prompt(0))
    assert bool(torch.isfinite(guided).all())
    assert_close_across_paths(guided, captured["latent"], rtol=1e-5, why=PATHS)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and SKIP_WARNING in
                r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith("GradOP+: "), messages
    texts = progress_texts(server)
    assert [t["node"] for t in texts] == ["gradop"] and SKIP_WARNING in texts[0]["text"], texts


def test_the_guard_replaces_only_the_bad_samples_and_reports_once(host, caplog):
    """StepGuard on a batch of three: a finite small step passes; a NaN sample and one 1e6 times the unguided
    value's size fall back on their unguided values; one warning for the run."""
    guard = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.guard")
    unguided = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    guided = unguided + 0.5
    guided[1, 0, 0, 0] = float("nan")
    guided[2] = unguided[2] * 1e6
    step_guard = guard.StepGuard("Test Method")
    with caplog.at_level(logging.WARNING):
        out = step_guard.apply(guided, unguided, "test step")
        again = step_guard.apply(guided, unguided, "test step")
    assert torch.equal(out[0], guided[0]) and torch.equal(out[1], unguided[1]) and torch.equal(out[2], unguided[2])
    assert torch.equal(again, out) and step_guard.fallbacks == 4  # the same call twice: exact
    assert len([r for r in caplog.records if GUARD_WARNING in r.getMessage()]) == 1
    assert not bool(guard.rejected(unguided + 100.0, unguided).any())  # 100 x a unit latent is not absurd


# --- the tiny SD3.5's buffers --------------------------------------------------------------------------------


def sincos_table(dim: int, size: int) -> torch.Tensor:
    """The MAE/SD3 2-D sin-cos table [size * size, dim], written here: the first half of the channels encodes
    the column (x), the second the row (y), each as [sin(p w_k), cos(p w_k)], w_k = 10000^(-k / (dim / 4))."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")

    def encode(positions):
        angles = positions.reshape(-1, 1) * omega.view(1, -1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(xs), encode(ys)], dim=1).float()


def test_the_tiny_sd35_pos_embed_is_defined_whatever_memory_it_gets(host):
    """MMDiT allocates pos_embed with torch.empty; freed NaN-filled blocks of its size are handed out again, which
    made some tiny SD3.5 runs end in NaN. The model builder fills it with the sin-cos table."""
    tiny_flow = harness.test_nodes_module().tiny_flow
    for _ in range(3):
        junk = [torch.full((1, 64 * 64, 128), float("nan")) for _ in range(4)]
        del junk
        pos_embed = tiny_flow.tiny_flow_model("sd35", 0).model.diffusion_model.pos_embed
        assert_close_across_paths(pos_embed[0], sincos_table(128, 64), rtol=1e-5, why=FORMULA)
