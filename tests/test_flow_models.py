"""The tiny flow transformers of the test host (devkit/host_nodes/gs_test_nodes/tiny_flow.py): each family is
built through ComfyUI's own supported_models class and model_base, so it carries the family's real sampling
(flow-matching CONST with its shift), latent format and patch grid, and it samples and decodes through the real
executor. The first step of the flow-models work: the capabilities' flow tests build on these."""
import math

import pytest
import torch

from devkit import graphs, harness
from devkit.tolerance import FORMULA, assert_close_across_paths

# family -> (model_base class, latent format, its sampling schedule: (kind, shift)). The shifts are the
# families' own defaults (supported_models.*.sampling_settings), which ComfyUI's ModelSampling nodes override.
FAMILIES = {
    "flux_dev": ("Flux", "Flux", ("flux", 1.15)),
    "flux_schnell": ("Flux", "Flux", ("discrete_flow", 1.0)),
    "sd35": ("SD3", "SD3", ("discrete_flow", 3.0)),
    "chroma": ("Chroma", "Flux", ("flux", 1.15)),
    "qwen_image": ("QwenImage", "Wan21", ("flux", 1.15)),  # ModelType.FLUX: the exponential shift
    "z_image": ("Lumina2", "Flux", ("discrete_flow", 3.0)),
}


def flow_sigma(kind: str, shift: float, t: float) -> float:
    """sigma at time t in (0, 1], written from the two flow schedules' definitions: SD3-style time shift
    ``shift t / (1 + (shift - 1) t)``; Flux-style exponential shift ``e^mu / (e^mu + 1/t - 1)`` with mu = shift."""
    if kind == "flux":
        return math.exp(shift) / (math.exp(shift) + (1.0 / t - 1.0))
    return shift * t / (1.0 + (shift - 1.0) * t)


@pytest.fixture(scope="module")
def tiny_flow(host):
    return harness.test_nodes_module().tiny_flow


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_each_family_is_built_with_its_own_sampling_latent_format_and_patch_grid(tiny_flow, kind):
    import comfy.model_sampling

    base_name, latent_name, (schedule, shift) = FAMILIES[kind]
    patcher = tiny_flow.tiny_flow_model(kind, 0)
    model = patcher.model
    assert type(model).__name__ == base_name
    assert type(model.latent_format).__name__ == latent_name and model.latent_format.latent_channels == 16
    sampling = model.model_sampling
    assert isinstance(sampling, comfy.model_sampling.CONST), type(sampling).__mro__
    assert getattr(model.diffusion_model, "patch_size", 2) == 2
    for percent in (0.1, 0.5, 0.9):  # percent_to_sigma(p) is sigma at t = 1 - p
        expected = flow_sigma(schedule, shift, 1.0 - percent)
        assert_close_across_paths(torch.tensor(float(sampling.percent_to_sigma(percent))), torch.tensor(expected),
                                  rtol=1e-4, why=FORMULA)


def test_tiny_sd35_position_table_is_set_not_left_uninitialised(tiny_flow):
    """MMDiT allocates pos_embed with torch.empty (a real checkpoint fills it); the tiny model sets the fixed 2-D
    sin-cos table. Left uninitialised it held whatever memory the allocator reused, and about one tiny SD3.5 run in
    three ended in a NaN latent."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    pos_embed = tiny_flow.tiny_flow_model("sd35", 0).model.diffusion_model.pos_embed
    table = torch.from_numpy(mmdit.get_2d_sincos_pos_embed(pos_embed.shape[2], 64)).float().reshape(pos_embed.shape)
    torch.testing.assert_close(pos_embed, table, rtol=0, atol=0)  # exact: a copy of the same float32 table


def test_an_unknown_family_is_refused(tiny_flow):
    with pytest.raises(ValueError, match="kind must be one of"):
        tiny_flow.tiny_flow_model("sd15", 0)


def txt2img(kind: str) -> dict:
    return graphs.flow_txt2img(kind)


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_each_family_samples_and_decodes_through_the_executor(host, captured, kind):
    host.run(txt2img(kind))
    image, latent = captured["image"], captured["latent"]
    assert tuple(image.shape) == (1, 64, 64, 3) and bool(torch.isfinite(image).all())
    assert latent.shape[1] == 16 and latent.shape[-2:] == (8, 8) and bool(torch.isfinite(latent).all())
    assert float(latent.std()) > 0


def panorama(kind: str, window_size: int, stride: int, width: int = 96) -> dict:
    prompt = txt2img(kind)
    del prompt["latent"], prompt["sample"], prompt["out_latent"]
    prompt["pano"] = {"class_type": "GS_SyncDiffusion", "inputs": {
        "model": ["ck", 0], "positive": ["guided", 0], "negative": ["neg", 0], "vae": ["ck", 2], "width": width,
        "height": 64, "batch_size": 1, "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "window_size": window_size, "stride": stride, "sync_weight": 0.0, "decay": 0.95,
        "sync_steps": 1, "sync_every": 1, "anchor": -1, "lpips_net": "vgg", "loss_decoder": "taesd",
        "unet_jacobian": "exact", "loop": False, "window_batch": 2}}
    prompt["decode"]["inputs"]["samples"] = ["pano", 0]
    prompt["out_latent"] = {"class_type": "GS_TestCapture", "inputs": {"key": "latent", "latent": ["pano", 0]}}
    return prompt


@pytest.mark.parametrize("name, window_size, stride", [("stride", 64, 40), ("window_size", 56, 16)])
def test_panorama_windows_off_the_patch_grid_are_refused_by_name(host, name, window_size, stride):
    result, server = host.run(panorama("flux_dev", window_size, stride), expect_success=False)
    assert not result["success"]
    message = host.node_error(server)
    assert message.startswith(f"{name} (") and "multiple of 16 px on this model" in message, message


def test_panorama_on_the_patch_grid_runs_and_the_native_window_is_1024_px(host, captured):
    host.run(panorama("flux_dev", 64, 16))  # three 64-px windows over 96 px
    assert tuple(captured["latent"].shape) == (1, 16, 8, 12) and bool(torch.isfinite(captured["latent"]).all())
    result, server = host.run(panorama("sd35", 0, 128, width=512), expect_success=False)
    assert "smaller than one window (1024 px" in host.node_error(server)


def sdedit_sigmas_prompt(kind: str, steps: int, strength: float) -> dict:
    prompt = {"ck": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": {"kind": kind, "seed": 0}},
              "full": {"class_type": "BasicScheduler", "inputs": {"model": ["ck", 0], "scheduler": "simple",
                                                                  "steps": steps, "denoise": 1.0}},
              "denoise": {"class_type": "BasicScheduler", "inputs": {"model": ["ck", 0], "scheduler": "simple",
                                                                     "steps": steps, "denoise": strength}}}
    for name in ("full", "denoise"):
        prompt[f"c_{name}"] = {"class_type": "GS_TestCapture", "inputs": {"key": name, "sigmas": [name, 0]}}
    for semantics in ("paper", "diffusers", "comfy"):
        prompt[semantics] = {"class_type": "GS_SDEditSigmas", "inputs": {
            "model": ["ck", 0], "scheduler": "simple", "steps": steps, "strength": strength, "semantics": semantics}}
        prompt[f"c_{semantics}"] = {"class_type": "GS_TestCapture", "inputs": {"key": semantics,
                                                                               "sigmas": [semantics, 0]}}
    return prompt


@pytest.mark.parametrize("kind", ["flux_dev", "flux_schnell", "sd35"])
def test_sdedit_strength_semantics_on_shifted_flow_schedules(host, captured, kind):
    """paper: the run starts at the model's own sigma(t0 = strength) (the flow shift formula above) and ends at 0;
    comfy: KSampler's denoise (BasicScheduler with denoise = strength, another node); diffusers: the last
    steps - int(steps * (1 - strength)) levels of the full schedule."""
    steps, strength = 8, 0.6
    host.run(sdedit_sigmas_prompt(kind, steps, strength))
    _, _, (schedule, shift) = FAMILIES[kind]
    paper = captured["paper"]
    assert_close_across_paths(paper[0], torch.tensor(flow_sigma(schedule, shift, strength)), rtol=1e-5, why=FORMULA)
    assert float(paper[-1]) == 0.0 and bool((paper[1:] < paper[:-1]).all()) and len(paper) == steps + 1
    assert_close_across_paths(captured["comfy"], captured["denoise"], rtol=1e-5, why=FORMULA)
    start = steps - int(steps * strength)  # diffusers img2img: int(steps * strength) steps are run
    assert_close_across_paths(captured["diffusers"], captured["full"][start:], rtol=1e-5, why=FORMULA)


def gradop(kind: str, decoder: str) -> dict:
    prompt = txt2img(kind)
    del prompt["latent"], prompt["sample"]
    prompt["strokes"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                                    "right": 0x2255CC, "batch": 1}}
    prompt["gradop"] = {"class_type": "GS_GradOPPlus", "inputs": {
        "model": ["ck", 0], "positive": ["guided", 0], "negative": ["neg", 0], "seed": 1, "steps": 4, "cfg": 1.0,
        "sampler_name": "euler", "scheduler": "simple", "vae": ["ck", 2], "strokes": ["strokes", 0],
        "strength": 0.8, "iterative_steps": 1, "grad_steps": 2, "learning_rate": 0.1,
        "painting_function": "gaussian blur", "decoder": decoder, "loss_resolution": "full", "mode": "GradOP+",
        "gamma": 0.001, "width": 0, "height": 0, "batch_size": 1}}
    prompt["decode"]["inputs"]["samples"] = ["gradop", 0]
    prompt["out_latent"]["inputs"]["latent"] = ["gradop", 0]
    return prompt


@pytest.mark.parametrize("kind", ["flux_dev", "sd35"])
def test_gradop_with_the_families_fast_decoders(host, captured, flow_vae_approx, kind):
    """GradOP+'s decoder 'taesd' reads the family's own TAESD file (taef1_decoder for Flux, taesd3_decoder for
    SD3.5: 16 latent channels) and the optimisation runs through a guidance-distilled (Flux dev, cfg 1) and a CFG
    (SD3.5) model. (The numbers are checked against a flow oracle in tests/oracles/test_flow_oracle.py.)"""
    import folder_paths

    host.run(gradop(kind, "taesd"))
    assert tuple(captured["image"].shape) == (1, 64, 64, 3)
    assert bool(torch.isfinite(captured["latent"]).all())
    name = {"flux_dev": "taef1_decoder", "sd35": "taesd3_decoder"}[kind]
    (flow_vae_approx / f"{name}.safetensors").unlink()  # that family's file, not the other one, is the one read
    folder_paths.filename_list_cache.pop("vae_approx", None)
    result, server = host.run(gradop(kind, "taesd"), expect_success=False)
    assert f"{name}.safetensors" in host.node_error(server)


def test_gradop_refuses_a_video_vae_by_name(host):
    result, server = host.run(gradop("qwen_image", "auto"), expect_success=False)
    assert "downscale ratio" in host.node_error(server) and "image VAE" in host.node_error(server)


# Flux.1 dev here; both steps on Flux.1 schnell, SD3.5 and Z-Image, and the flow oracle, in test_semantic_flow.py.
@pytest.mark.parametrize("kind, cfg, step_mode", [("flux_dev", 1.0, "normalised")])
def test_clip_guidance_runs_on_a_guidance_distilled_flow_model(host, clip_guidance, captured, kind, cfg, step_mode):
    """The post-CFG hook on Flux.1 dev (cfg 1: no unconditional prediction, the normalised step falls back on the
    predicted noise's size)."""
    prompt = txt2img(kind)
    prompt["clip"] = {"class_type": "GS_OpenCLIPLoader", "inputs": {
        "architecture": "GS-Test-Tiny-ViT", "checkpoint": "gs_tiny_vit.safetensors", "precision": "fp32",
        "download": False, "pretrained": "laion2b_s34b_b79k"}}
    prompt["guide"] = {"class_type": "GS_CLIPSemanticGuidance", "inputs": {
        "model": ["ck", 0], "vae": ["ck", 2], "clip_model": ["clip", 0], "text": "a red castle", "text_weight": 0.3,
        "image_weight": 0.0, "image_loss": "content", "cutouts": 2, "start_percent": 0.0, "end_percent": 1.0,
        "every": 1, "decoder": "auto", "step_mode": step_mode}}
    prompt["sample"]["inputs"].update(model=["guide", 0], cfg=cfg, steps=3)
    host.run(prompt)
    guided = captured["latent"]
    prompt["sample"]["inputs"]["model"] = ["ck", 0]
    host.run(prompt)
    # a difference check (guided vs unguided), not a bitwise-equality claim
    assert bool(torch.isfinite(guided).all()) and not torch.equal(guided, captured["latent"])
