"""Bad inputs sent to the real server (POST /prompt), as an API client or a hand-edited workflow can send them.

Each one must end in a clear message that names the input (or, where the host's own nodes accept the
value, work as they do), the server must survive, and a good prompt must run after all of them. The
README's "Errors and limits" section lists what is rejected and why.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from devkit import graphs
from devkit import server_support as ss

pytestmark = pytest.mark.server

TOP_SEED = 2 ** 64 - 1  # the largest seed the seed widgets allow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    approx = base / "models" / "vae_approx"
    approx.mkdir(parents=True)
    (approx / "taesd_decoder.safetensors").write_bytes(b"this is not a safetensors file")
    paintings = base / "input" / "guided_synthesis"
    paintings.mkdir(parents=True)
    (paintings / "junk.png").write_bytes(b"not an image at all")
    (paintings / "empty.png").write_bytes(b"")
    png = (ss.harness.WORKFLOWS / "inputs" / "guided_synthesis_strokes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (paintings / "truncated.png").write_bytes(png[: len(png) // 3])  # a real PNG header, pixel data cut
    clip_folder = base / "models" / "clip_guidance"
    clip_folder.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": ss.harness.PickleOnly()}, str(clip_folder / "needs_pickle.pt"))
    # no LPIPS trunk here (model_files=False): the panorama case checks the error that names the missing file
    with ss.running_server(base, extra_paths="  vae_approx: models/vae_approx\n"
                                             "  clip_guidance: models/clip_guidance\n", model_files=False) as running:
        yield running


# --- prompt builders (tiny models; node "9" is always the pack node under test) ----------------------

def sdedit(**inputs) -> dict:
    prompt = graphs.base()
    latent = graphs.encode(prompt, "5", graphs.solid_image(prompt, "4", 64, 64))
    graphs.sdedit(prompt, "9", latent=latent, steps=3, **inputs)
    graphs.capture(prompt, "10", "x", latent=["9", 0])
    return prompt


def sdedit_sigmas(**inputs) -> dict:
    prompt = graphs.base()
    prompt["9"] = {"class_type": "GS_SDEditSigmas", "inputs": {
        "model": ["1", 0], "scheduler": "normal", "steps": 4, "strength": 0.5, "semantics": "paper", **inputs}}
    graphs.capture(prompt, "10", "x", sigmas=["9", 0])
    return prompt


def gradop(**inputs) -> dict:
    prompt = graphs.base()
    image = graphs.strokes(prompt, "4")
    graphs.gradop(prompt, "9", image, **{"steps": 6, "iterative_steps": 1, "grad_steps": 1, **inputs})
    graphs.capture(prompt, "10", "x", latent=["9", 0])
    return prompt


def gradop_sampler(noise_seed=3, sampler=None, **inputs) -> dict:
    prompt = graphs.base()
    image = graphs.strokes(prompt, "4")
    prompt["9"] = {"class_type": "GS_GradOPPlusSampler", "inputs": {
        "sampler_name": "euler", "vae": ["1", 2], "strokes": image,
        **{**graphs.GRADOP_METHOD, "iterative_steps": 1, "grad_steps": 1}, **inputs}}
    sigmas = graphs.basic_scheduler(prompt, "6", 6, "ddim_uniform")
    latent = graphs.empty_latent(prompt, "7")
    out = graphs.sampler_custom(prompt, "8", ["9", 0], sigmas, latent, noise_seed)
    graphs.capture(prompt, "10", "x", latent=out)
    return prompt


def regions(**inputs) -> dict:
    prompt = graphs.base()
    prompt["4"] = {"class_type": "GS_TestStrokePattern", "inputs": {"pattern": "square", "width": 64, "height": 64}}
    prompt["9"] = {"class_type": "GS_StrokeRegions", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "stroke": ["4", 0], "prompt": "a castle by the river",
        "region_spec": "red: castle", "strength": 0.5, "mode": "paint_with_words", "start_percent": 0.0,
        "end_percent": 1.0, "missing_phrases": "append", **inputs}}
    graphs.capture(prompt, "10", "x", image=["9", 2])
    return prompt


def semantic(**inputs) -> dict:
    prompt = graphs.base()
    prompt["4"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    prompt["5"] = {"class_type": "GS_TestTinyOpenCLIP", "inputs": {"kind": "vit", "seed": 0}}
    prompt["9"] = {"class_type": "GS_CLIPSemanticGuidance", "inputs": {
        "model": ["1", 0], "vae": ["1", 2], "clip_model": ["5", 0], "text": "a castle", "text_weight": 0.5,
        "image_weight": 0.5, "image_loss": "content", "cutouts": 1, "start_percent": 0.0, "end_percent": 1.0,
        "every": 1, "decoder": "auto", "step_mode": "normalised", "reference_image": ["4", 0], **inputs}}
    graphs.empty_latent(prompt, "6", 64, 64)
    prompt["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["9", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["6", 0], "denoise": 1.0}}
    graphs.capture(prompt, "10", "x", latent=["7", 0])
    return prompt


def openclip_loader(**inputs) -> dict:
    prompt = semantic()
    prompt["9"] = {"class_type": "GS_OpenCLIPLoader", "inputs": {
        "architecture": "ViT-B-32", "checkpoint": "needs_pickle.pt", "precision": "fp32", "download": False,
        "pretrained": "laion2b_s34b_b79k", **inputs}}
    guidance = semantic()["9"]
    guidance["inputs"]["clip_model"] = ["9", 0]
    prompt["11"] = guidance
    prompt["7"]["inputs"]["model"] = ["11", 0]
    return prompt


def panorama(**inputs) -> dict:
    prompt = graphs.base()
    graphs.syncdiffusion(prompt, "9", **inputs)
    graphs.capture(prompt, "10", "x", latent=["9", 0])
    return prompt


def seamless(width=64, **inputs) -> dict:
    prompt = graphs.base()
    graphs.empty_latent(prompt, "6", width, 32)
    prompt["9"] = {"class_type": "GS_SeamlessDecode", "inputs": {
        "samples": ["6", 0], "vae": ["1", 2], "tile_size": 64, "overlap": 16, "circular": True, **inputs}}
    graphs.capture(prompt, "10", "x", image=["9", 0])
    return prompt


def nan_noise_mask(prompt: dict, latent: list) -> list:
    """``latent`` with a noise mask of NaN (SolidMask takes a NaN value: JSON allows it)."""
    prompt["20"] = {"class_type": "SolidMask", "inputs": {"value": math.nan, "width": 64, "height": 64}}
    prompt["21"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": latent, "mask": ["20", 0]}}
    return ["21", 0]


def sdedit_nan_mask() -> dict:
    prompt = graphs.base()
    latent = graphs.encode(prompt, "5", graphs.solid_image(prompt, "4", 64, 64))
    graphs.sdedit(prompt, "9", latent=nan_noise_mask(prompt, latent), steps=3)
    graphs.capture(prompt, "10", "x", latent=["9", 0])
    return prompt


def gradop_sampler_nan_mask() -> dict:
    prompt = gradop_sampler()
    prompt["8"]["inputs"]["latent_image"] = nan_noise_mask(prompt, ["7", 0])
    return prompt


def canvas(**inputs) -> dict:
    return {"9": {"class_type": "GS_StrokeCanvas", "inputs": {
                "painting": "", "width": 40, "height": 24, "background_color": "#ffffff", **inputs}},
            "10": {"class_type": "GS_TestCapture", "inputs": {"key": "x", "image": ["9", 0]}}}


# (case id, prompt, how it must end: "ok" | "validation" | "execution", texts the message must contain)
BAD_INPUTS = [
    # derived seeds wrap at 2^64 like the host's own seeds
    ("seed-top-sdedit-repeats", sdedit(seed=TOP_SEED, repeats=2, sampler_name="euler_ancestral"), "ok", []),
    ("seed-top-gradop-ancestral", gradop(seed=TOP_SEED, sampler_name="euler_ancestral"), "ok", []),
    ("seed-top-gradop-sampler-form", gradop_sampler(noise_seed=TOP_SEED, sampler_name="dpmpp_2s_ancestral"), "ok", []),
    # unknown Combo values (API clients, hand-edited workflows)
    ("sampler-sdedit", sdedit(sampler_name="euler_fast"), "execution", ["sampler_name: 'euler_fast'", "euler, "]),
    ("sampler-gradop", gradop(sampler_name="nope"), "execution", ["sampler_name: 'nope'", "ddim"]),
    ("sampler-gradop-form", gradop_sampler(sampler_name="nope"), "execution", ["sampler_name: 'nope'"]),
    ("scheduler-sdedit", sdedit(scheduler="smooth"), "execution", ["scheduler: 'smooth'", "karras"]),
    ("scheduler-sigmas", sdedit_sigmas(scheduler="smooth"), "execution", ["scheduler: 'smooth'", "karras"]),
    ("scheduler-gradop", gradop(scheduler="smooth"), "execution", ["scheduler: 'smooth'", "ddim_uniform"]),
    ("semantics-sigmas", sdedit_sigmas(semantics="meng"), "execution", ["semantics: 'meng'", "paper"]),
    ("painting-function", gradop(painting_function="oil"), "execution", ["painting_function: 'oil'"]),
    ("decoder-form", gradop_sampler(decoder="fp8"), "execution", ["decoder: 'fp8'", "taesd"]),
    ("regions-mode", regions(mode="magic"), "execution", ["mode: 'magic'", "paint_with_words, dense"]),
    # non-finite numbers (JSON allows NaN): rejected naming the input; infinity fails the host's max check
    ("nan-cfg-sdedit", sdedit(cfg=math.nan), "execution", ["cfg must be a finite number"]),
    ("nan-strength-sigmas", sdedit_sigmas(strength=math.nan), "execution", ["strength must be a finite number"]),
    ("nan-lr-gradop", gradop(learning_rate=math.nan), "execution", ["learning_rate must be a finite number"]),
    ("nan-gamma-form", gradop_sampler(gamma=math.nan), "execution", ["gamma must be a finite number"]),
    ("nan-strength-regions", regions(strength=math.nan), "execution", ["strength must be a finite number"]),
    ("inf-cfg-sdedit", sdedit(cfg=math.inf), "validation", ["cfg"]),
    # Stroke Canvas: the host's own checks stay on, each error on its own input; unreadable files by name
    ("canvas-width", canvas(width=3), "validation", ["width"]),
    ("canvas-colour", canvas(background_color="blue"), "execution", ["background_color: 'blue' is not a colour"]),
    ("canvas-not-an-image", canvas(painting="guided_synthesis/junk.png [input]"), "execution",
     ["painting: junk.png is not a readable image"]),
    ("canvas-zero-bytes", canvas(painting="guided_synthesis/empty.png [input]"), "execution",
     ["painting: empty.png is not a readable image"]),
    # a truncated PNG loads as the host's Load Image loads it (node_helpers.pillow: the readable part)
    ("canvas-truncated", canvas(painting="guided_synthesis/truncated.png [input]", width=512, height=512), "ok", []),
    ("canvas-outside-input", canvas(painting="../../etc/passwd [input]"), "validation", ["painting", "outside"]),
    # a junk TAESD file in models/vae_approx
    ("taesd-junk", gradop(decoder="taesd"), "execution",
     ["models/vae_approx/taesd_decoder.safetensors is not a readable TAESD decoder"]),
    # a size that cannot fit: stopped before sampling, with the estimate and the largest size that fits
    ("gradop-too-large", gradop(width=16384, height=16384), "execution", ["GiB", "largest output that fits is about"]),
    ("gradop-form-too-large", None, "execution", ["largest output that fits is about"]),
    # CLIP semantic guidance and its loader
    ("semantic-image-loss", semantic(image_loss="texture"), "execution", ["image_loss: 'texture'", "content, style, both"]),
    ("semantic-decoder", semantic(decoder="fp8"), "execution", ["decoder: 'fp8'", "downscaled latent"]),
    ("semantic-nan-weight", semantic(text_weight=math.nan), "execution", ["text_weight must be a finite number"]),
    ("semantic-window", semantic(start_percent=0.8, end_percent=0.2), "execution",
     ["start_percent (0.8) must not be larger than end_percent (0.2)"]),
    ("semantic-step-mode", semantic(step_mode="exact"), "execution", ["step_mode: 'exact'"]),
    ("openclip-missing-file", openclip_loader(checkpoint="ViT-B-32.safetensors"), "execution",
     ["checkpoint: 'ViT-B-32.safetensors' is not in models/clip_guidance", "open_clip checkpoint for ViT-B-32"]),
    ("openclip-pickle", openclip_loader(), "execution", ["needs_pickle.pt needs full unpickling"]),
    ("openclip-precision", openclip_loader(precision="int4"), "execution", ["precision: 'int4'"]),
    # panoramas: sizes, strides, anchors and the LPIPS trunk file (this server has none)
    ("panorama-canvas-small", panorama(width=24), "execution", ["smaller than one window", "window_size"]),
    ("panorama-stride-not-8", panorama(stride=12), "execution", ["stride must be a positive multiple of 8"]),
    ("panorama-stride-large", panorama(stride=40), "execution", ["stride (40 px) must not be larger"]),
    ("panorama-anchor", panorama(anchor=9), "execution", ["anchor must be -1", "0..2"]),
    ("panorama-lpips-missing", panorama(sync_weight=20.0), "execution",
     ["lpips_net 'vgg' needs", "vgg16-397923af.pth", "models/lpips/"]),
    ("panorama-lpips-net", panorama(lpips_net="vgg19"), "execution", ["lpips_net: 'vgg19'"]),
    ("panorama-multidiffusion-ok", panorama(), "ok", []),
    # booleans and numbers of the wrong type (ComfyUI would turn "false" into true, 2.5 steps into 2): refused at
    # validation, naming the input and the type it takes
    ("string-download", openclip_loader(download="false"), "validation",
     ["download", "download: expected a boolean (true or false), got the string 'false'"]),
    ("string-loop", panorama(loop="false"), "validation", ["loop", "loop: expected a boolean (true or false)"]),
    ("string-circular", seamless(circular="false"), "validation", ["circular", "circular: expected a boolean"]),
    ("number-circular", seamless(circular=0), "validation", ["circular", "got int 0"]),
    ("string-steps", panorama(steps="2"), "validation", ["steps", "steps: expected a whole number, got the string '2'"]),
    ("fraction-steps", panorama(steps=2.5), "validation", ["steps", "steps: expected a whole number, got float 2.5"]),
    ("string-cfg", sdedit(cfg="5.0"), "validation", ["cfg", "cfg: expected a number, got the string '5.0'"]),
    ("boolean-cfg", sdedit(cfg=True), "validation", ["cfg", "cfg: expected a number, got the boolean true"]),
    ("whole-float-steps-ok", panorama(steps=2.0), "ok", []),
    # NaN in a noise mask (or a mask): refused by name instead of a NaN result
    ("sdedit-nan-noise-mask", sdedit_nan_mask(), "execution", ["latent: its noise_mask: it has NaN or infinite values"]),
    ("gradop-form-nan-noise-mask", gradop_sampler_nan_mask(), "execution",
     ["noise_mask (of the sampler's latent): it has NaN or infinite values"]),
    # paper semantics at the maximum step count builds its schedule at once
    ("sigmas-10000-paper", sdedit_sigmas(steps=10000), "ok", []),
]


def _too_large_sampler_form() -> dict:
    prompt = gradop_sampler()
    prompt["7"]["inputs"].update(width=16384, height=16384)
    return prompt


BAD_INPUTS = [(case, prompt if prompt is not None else _too_large_sampler_form(), end, texts)
              for case, prompt, end, texts in BAD_INPUTS]


@pytest.mark.parametrize("case,prompt,end,texts", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_ends_in_a_message_naming_the_input(server, case, prompt, end, texts):
    entry = ss.submit(server, prompt)
    if end == "validation":
        assert "validation" in entry, f"{case}: the server accepted it: {json.dumps(entry)[:500]}"
        errors = entry["validation"]["node_errors"]
        assert list(errors) == ["9"], errors
        named = {error["extra_info"].get("input_name") for error in errors["9"]["errors"]}
        text = json.dumps(errors["9"]["errors"])
        assert len(named) == 1 and named <= set(texts), f"{case}: attributed to {named}: {text[:500]}"
        for expected in texts:
            assert expected in text, f"{case}: {expected!r} not in {text[:800]}"
        return
    assert "validation" not in entry, f"{case}: refused at validation: {json.dumps(entry)[:800]}"
    status = entry["status"]["status_str"]
    message = ss.execution_error(entry)
    if end == "ok":
        assert status == "success", f"{case}: {message}"
        return
    assert status == "error", f"{case}: ran although it should have been refused"
    for expected in texts:
        assert expected in message, f"{case}: {expected!r} not in {message!r}"
    assert str(server["base"]) not in message, f"{case}: the message shows a server path: {message!r}"
    assert "Traceback" not in message


def test_a_good_prompt_runs_after_the_bad_ones_and_the_server_is_alive(server):
    entry = ss.submit(server, sdedit())
    assert entry["status"]["status_str"] == "success", ss.execution_error(entry)
    assert ss.http(server["url"] + "/system_stats")["system"]

