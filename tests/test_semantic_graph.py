"""CLIP semantic guidance through the real executor: tiny SD1.x model, tiny random open_clip towers saved to
models/clip_guidance and read back by the OpenCLIP Loader."""
from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.nn.functional as F

import graphs
import harness
from tolerance import BATCH, ORACLE, PATHS, TWO_RUNS, assert_close_across_paths

VIT = {"architecture": "GS-Test-Tiny-ViT", "checkpoint": "gs_tiny_vit.safetensors"}
RN = {"architecture": "GS-Test-Tiny-RN", "checkpoint": "gs_tiny_rn.safetensors"}
TEXT = "a red apple on a wooden table"
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# A guided step computed on a batch vs alone (decoder, CLIP, backward, then g / rms(g)): measured up to 4.1e-4 of
# its largest value (2-core Xeon, AVX-512); the decode's clamp to [0, 1] lets rounding switch a pixel's gradient
# off or on, so the step moves in isolated jumps rather than by ulps. 1e-2 leaves a margin of 24, while Gram
# features mixed half-way across the batch (a planted SDG-style batch Gram) moved it by 8.9e-2.
STEP_RTOL = 1e-2


def guidance_inputs(**overrides) -> dict:
    inputs = {"text": TEXT, "text_weight": 1.0, "image_weight": 1.0, "image_loss": "content", "cutouts": 2,
              "start_percent": 0.0, "end_percent": 1.0, "every": 1, "decoder": "auto", "step_mode": "normalised"}
    inputs.update(overrides)
    return inputs


def add_branch(prompt, tag: str, loader: dict | None, guidance: dict | None, sampler="euler", steps=6, batch=1,
               seed=5, reference=None, mask=None, latent=None) -> None:
    """Loader -> recorder 'before' -> guidance -> recorder 'after' -> KSampler -> capture latent and image.
    ``guidance`` None samples the unpatched model."""
    model = ["1", 0]
    if guidance is not None:
        prompt[f"{tag}l"] = {"class_type": "GS_OpenCLIPLoader", "inputs": {
            "precision": "fp32", "download": False, "pretrained": "laion2b_s34b_b79k", **loader}}
        prompt[f"{tag}b"] = {"class_type": "GS_TestPostCFGRecorder", "inputs": {"model": model, "key": f"{tag}:before"}}
        inputs = {"model": [f"{tag}b", 0], "vae": ["1", 2], "clip_model": [f"{tag}l", 0], **guidance}
        if reference is not None:
            inputs["reference_image"] = reference
        if mask is not None:
            inputs["mask"] = mask
        prompt[f"{tag}g"] = {"class_type": "GS_CLIPSemanticGuidance", "inputs": inputs}
        prompt[f"{tag}a"] = {"class_type": "GS_TestPostCFGRecorder", "inputs": {"model": [f"{tag}g", 0],
                                                                               "key": f"{tag}:after"}}
        model = [f"{tag}a", 0]
    if latent is None:
        prompt[f"{tag}e"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                                          "batch_size": batch}}
        latent = [f"{tag}e", 0]
    prompt[f"{tag}k"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": sampler, "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": latent, "denoise": 1.0}}
    prompt[f"{tag}d"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}k", 0], "vae": ["1", 2]}}
    graphs.capture(prompt, f"{tag}c", tag, latent=[f"{tag}k", 0])
    graphs.capture(prompt, f"{tag}i", f"{tag}:image", image=[f"{tag}d", 0])


@pytest.fixture
def records():
    store = harness.test_nodes_module().semantic_probes.RECORDS
    store.clear()
    return store


def tiny_clip(kind="vit"):
    return harness.test_nodes_module().semantic_probes.tiny_open_clip(kind, 0)


def clip_pixels(image_bhwc: torch.Tensor) -> torch.Tensor:
    """An IMAGE as the tiny CLIP's normalised 64 px input, written here from open_clip's OpenAI constants."""
    pixels = F.interpolate(image_bhwc.movedim(-1, 1).float(), size=(64, 64), mode="bilinear", antialias=True,
                           align_corners=False)
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def clip_embedding(model, image_bhwc: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(clip_pixels(image_bhwc)).float()


def text_embedding(model, text: str) -> torch.Tensor:
    import open_clip
    with torch.no_grad():
        return model.encode_text(open_clip.get_tokenizer("GS-Test-Tiny-ViT")([text])).float()


def guided_steps(records, tag: str) -> list[int]:
    """Indices of the evaluations the guidance changed (before != after)."""
    before, after = records[f"{tag}:before"], records[f"{tag}:after"]
    assert len(before) == len(after)
    # an unguided evaluation returns the very tensor it got, so exact equality holds there
    changed = [not torch.equal(b["denoised"], a["denoised"]) for b, a in zip(before, after)]  # same call: exact
    return [i for i, flag in enumerate(changed) if flag]


# ----------------------------------------------------------------------------------------------


def crops_similarity(model, image_bhwc: torch.Tensor, target: torch.Tensor, count: int = 32) -> float:
    """Mean CLIP cosine similarity to ``target`` over ``count`` seeded random square crops (half the side to
    the whole image), each resized to CLIP's input: the score that cutout guidance optimises."""
    generator = torch.Generator().manual_seed(0)
    height, width = image_bhwc.shape[1:3]
    scores = []
    for _ in range(count):
        side = int(torch.randint(min(height, width) // 2, min(height, width) + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        piece = image_bhwc[:, top:top + side, left:left + side]
        scores.append(F.cosine_similarity(clip_embedding(model, piece), target))
    return float(torch.stack(scores).mean())


def test_text_guidance_raises_clip_similarity_and_the_original_model_is_unchanged(host, clip_guidance, captured,
                                                                                   records):
    """Without cutouts the whole picture's similarity to the text rises; with the default 4 cutouts the
    similarity averaged over random crops rises (measured on VAE Decode's images)."""
    prompt = graphs.base()
    add_branch(prompt, "plain_before", None, None)
    add_branch(prompt, "text", VIT, guidance_inputs(text_weight=1.0, cutouts=0))
    add_branch(prompt, "cutouts", VIT, guidance_inputs(text_weight=1.0, cutouts=4))
    host.run(prompt)
    prompt = graphs.base()
    add_branch(prompt, "plain_after", None, None)  # the unpatched MODEL after a guided run
    host.run(prompt)
    assert_close_across_paths(captured["plain_before"], captured["plain_after"], rtol=1e-5, why=TWO_RUNS)
    model = tiny_clip()
    target = text_embedding(model, TEXT)
    guided = F.cosine_similarity(clip_embedding(model, captured["text:image"]), target)
    plain = F.cosine_similarity(clip_embedding(model, captured["plain_before:image"]), target)
    assert float(guided) > float(plain), (float(guided), float(plain))
    guided = crops_similarity(model, captured["cutouts:image"], target)
    plain = crops_similarity(model, captured["plain_before:image"], target)
    assert guided > plain, (guided, plain)
    assert len(guided_steps(records, "text")) == 6


def test_content_guidance_raises_similarity_to_the_reference(host, clip_guidance, captured, records):
    prompt = graphs.base()
    reference = graphs.strokes(prompt, "4", width=64, height=64, left=0xE02020, right=0x20E040)
    add_branch(prompt, "plain", None, None)
    add_branch(prompt, "content", VIT, guidance_inputs(text="", image_weight=1.0, image_loss="content", cutouts=0),
               reference=reference)
    prompt["4r"] = {"class_type": "GS_TestCapture", "inputs": {"key": "reference", "image": reference}}
    host.run(prompt)
    model = tiny_clip()
    target = clip_embedding(model, captured["reference"])
    guided = F.cosine_similarity(clip_embedding(model, captured["content:image"]), target)
    plain = F.cosine_similarity(clip_embedding(model, captured["plain:image"]), target)
    assert float(guided) > float(plain), (float(guided), float(plain))


def _style_features(model, image_bhwc):
    with torch.no_grad():
        return model.visual.forward_intermediates(clip_pixels(image_bhwc), indices=[0, 1, 2, 3, 4])[
            "image_intermediates"]


def test_style_guidance_lowers_the_style_loss_on_a_resnet_tower(host, clip_guidance, captured, records):
    from guidance import semantic
    prompt = graphs.base()
    reference = graphs.strokes(prompt, "4", width=64, height=64, left=0xE02020, right=0x2040E0)
    add_branch(prompt, "plain", None, None)
    add_branch(prompt, "style", RN, guidance_inputs(text="", image_weight=0.3, image_loss="style", cutouts=0),
               reference=reference)
    prompt["4r"] = {"class_type": "GS_TestCapture", "inputs": {"key": "reference", "image": reference}}
    host.run(prompt)
    model = tiny_clip("rn")
    targets = [semantic.gram(f) for f in _style_features(model, captured["reference"])]
    # measured on VAE Decode's images: the loss scores the clamped decode, the picture the user gets
    guided = semantic.style_loss(_style_features(model, captured["style:image"]), targets, relative=True)
    plain = semantic.style_loss(_style_features(model, captured["plain:image"]), targets, relative=True)
    assert float(guided) < float(plain), (float(guided), float(plain))


def test_a_batch_of_two_equals_two_batches_of_one(host, clip_guidance, captured, records):
    """Per-sample losses (spherical distances, Grams, per-image cutouts of the same squares): at the first guided
    evaluation each image of a guided batch of two takes the step it takes guided alone. Only that evaluation is
    compared: its inputs agree up to the batched UNet's rounding, while later ones start from states that the
    normalised steps have already moved apart by amplified rounding. (A whole 6-step run was compared before: 4e-4
    relative on one CPU, 5.3e-3 on an AVX-512 one; such a bound measures the tiny random model's sensitivity, not
    the arithmetic.) SDG's batch-mixing Gram would change the step entirely."""
    prompt = graphs.base()
    reference = graphs.strokes(prompt, "4", width=64, height=64)
    settings = guidance_inputs(image_loss="both", cutouts=2)
    prompt["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    prompt["7"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["5", 0], "batch_index": 0, "length": 2}}
    add_branch(prompt, "pair", VIT, settings, reference=reference, latent=["7", 0])
    for index in range(2):
        prompt[f"6{index}"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["5", 0],
                                                                           "batch_index": index, "length": 1}}
        add_branch(prompt, f"one{index}", VIT, settings, reference=reference, latent=[f"6{index}", 0])
        add_branch(prompt, f"plain{index}", None, None, latent=[f"6{index}", 0])
    host.run(prompt)
    assert 0 in guided_steps(records, "pair")
    pair_before, pair_after = records["pair:before"][0]["denoised"], records["pair:after"][0]["denoised"]
    for index in range(2):
        before, after = records[f"one{index}:before"][0]["denoised"], records[f"one{index}:after"][0]["denoised"]
        rows = slice(index, index + 1)
        assert_close_across_paths(pair_before[rows], before, rtol=1e-5, why=BATCH)  # the UNet's x0
        step, pair_step = after - before, pair_after[rows] - pair_before[rows]
        # the decoder, CLIP and their backward on a batch vs alone, then g / rms(g): see STEP_RTOL
        print(f"image {index}: step differs by {float((pair_step - step).abs().max() / step.abs().max()):.1e} "
              "of its largest value")
        assert_close_across_paths(pair_step, step, rtol=STEP_RTOL, why=BATCH)
        assert float(step.abs().max()) > 0.01 * float(before.abs().max())  # a real step
        alone = captured[f"one{index}"]
        assert float((alone - captured[f"plain{index}"]).abs().max()) > 0.1 * float(alone.abs().max())


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_the_gradient_of_a_batch_of_two_is_the_gradients_of_each_alone(host, kind):
    """The guidance's loss gradient on a batch equals each image's alone (per-sample Gram, spherical distance)."""
    semantic_nodes = harness.loaded_module("nodes.semantic")
    probes = harness.test_nodes_module().semantic_probes
    import comfy.latent_formats
    clip = semantic_nodes.OpenCLIP.wrap(probes.tiny_open_clip(kind, 0), probes.KINDS[kind], "fp32")
    reference = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    guidance = semantic_nodes.SemanticGuidance(
        clip, harness.test_nodes_module().tiny.tiny_vae(0), "auto", TEXT, 1.0, 1.0, "both", reference, None, 3,
        1e9, 0.0, 1, "normalised")
    latent_format, levels = comfy.latent_formats.SD15(), torch.tensor([14.6, 5.0, 1.0, 0.0])
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    guidance.begin(latent_format, (2, 4, 8, 8), levels)
    both = guidance.gradient(guidance.run, x0, 1)
    for index in range(2):
        guidance.begin(latent_format, (1, 4, 8, 8), levels)
        alone = guidance.gradient(guidance.run, x0[index:index + 1], 1)
        assert_close_across_paths(both[index:index + 1], alone, rtol=1e-4, why=BATCH)
    guidance.end()


def test_weight_zero_reproduces_unguided_sampling(host, clip_guidance, captured, records):
    prompt = graphs.base()
    add_branch(prompt, "plain", None, None)
    add_branch(prompt, "zero", VIT, guidance_inputs(text_weight=0.0, image_weight=0.0))
    add_branch(prompt, "closed", VIT, guidance_inputs(start_percent=0.5, end_percent=0.5, every=100))
    host.run(prompt)
    assert_close_across_paths(captured["zero"], captured["plain"], rtol=1e-5, why=PATHS)  # weight 0 vs unpatched
    assert not guided_steps(records, "zero")


def test_the_clip_model_is_loaded_by_comfyui_model_management(host, clip_guidance, captured, records):
    """The guided MODEL lists the CLIP's ModelPatcher as an additional model, so the sampler loads it with the
    UNet; afterwards it is one of ComfyUI's loaded models (offloaded by ComfyUI when memory is needed)."""
    import comfy.model_management
    import open_clip
    comfy.model_management.unload_all_models()
    prompt = graphs.base()
    add_branch(prompt, "text", VIT, guidance_inputs(cutouts=0), steps=2)
    host.run(prompt)
    loaded = [m.model.model for m in comfy.model_management.current_loaded_models if m.model is not None]
    assert any(isinstance(model, open_clip.CLIP) for model in loaded), [type(m).__name__ for m in loaded]
    assert len(guided_steps(records, "text")) == 2
    # the run's own state (decoder copy, targets) is released when sampling ends
    guidance = [f for f in records["text:after"][0]["post_cfg_functions"] if hasattr(f, "outer_sample")]
    assert len(guidance) == 1 and guidance[0].run is None


@pytest.mark.parametrize("every,expected", [(1, 4), (2, 2)])
def test_heun_guides_once_per_step_not_per_evaluation(host, clip_guidance, captured, records, every, expected):
    prompt = graphs.base()
    add_branch(prompt, "heun", VIT, guidance_inputs(every=every, cutouts=0), sampler="heun", steps=4)
    host.run(prompt)
    assert len(records["heun:before"]) == 7  # Heun: two evaluations per step, one at the last
    assert len(guided_steps(records, "heun")) == expected


def test_mask_gradient_is_zero_outside_the_mask(host, clip_guidance, captured, records):
    prompt = graphs.base()
    graphs.strokes(prompt, "4", width=64, height=64)  # output 1: a MASK of the left half
    add_branch(prompt, "masked", VIT, guidance_inputs(cutouts=2), mask=["4", 1])
    host.run(prompt)
    steps = guided_steps(records, "masked")
    assert steps
    for i in steps:
        delta = records["masked:before"][i]["denoised"] - records["masked:after"][i]["denoised"]
        assert torch.count_nonzero(delta[..., 4:]) == 0  # latent columns 4-7: the right half
        assert float(delta[..., :4].abs().sum()) > 0


def test_one_guided_step_equals_an_independent_oracle(host, clip_guidance, captured, records):
    """Text loss, no cutouts: x0' = x0 - w * g / rms(g) * rms(cond - uncond), g = d/dx0 of w * angle^2 / 2 between
    CLIP(resize(clamp(decode(x0), 0, 1))) and CLIP(text), written here from the formulas with plain torch."""
    import open_clip
    weight = 0.7
    prompt = graphs.base()
    add_branch(prompt, "one", VIT, guidance_inputs(text_weight=weight, cutouts=0), steps=3)
    host.run(prompt)
    first = records["one:before"][0]
    got = records["one:after"][0]["denoised"]
    tiny = harness.test_nodes_module().tiny
    with torch.inference_mode(False):
        vae = tiny.tiny_vae(0)
        decoder = copy.deepcopy(vae.first_stage_model).float()
        for module in decoder.modules():  # normal (grad-capable) copies of the weights
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = b.detach().clone()
        model = tiny_clip()
        text = model.encode_text(open_clip.get_tokenizer("GS-Test-Tiny-ViT")([TEXT])).float().detach()
        x0 = first["denoised"].clone().float().requires_grad_(True)
        image = ((decoder.decode(x0 / 0.18215) + 1.0) / 2.0).clamp(0.0, 1.0)
        pixels = F.interpolate(image, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
        embedding = model.encode_image((pixels - mean) / std).float()
        cosine = (embedding * text).sum(-1) / (embedding.norm(dim=-1) * text.norm(dim=-1))
        angle = torch.arccos(cosine.clamp(-1, 1))
        loss = (weight * angle ** 2 / 2).sum()
        (grad,) = torch.autograd.grad(loss, x0)
    rms = lambda t: t.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)  # noqa: E731
    expected = first["denoised"] - weight * grad / rms(grad) * rms(first["cond_denoised"] - first["uncond_denoised"])
    assert_close_across_paths(got, expected, rtol=1e-5, why=ORACLE)
    assert not torch.allclose(got, first["denoised"], atol=1e-4)


# --- the loader ---------------------------------------------------------------------------------


def loader_prompt(**inputs) -> dict:
    prompt = graphs.base()
    add_branch(prompt, "x", {**VIT, **inputs}, guidance_inputs(cutouts=0), steps=2)
    return prompt


@pytest.mark.parametrize("inputs,texts", [
    ({"checkpoint": "nope.safetensors"}, ["checkpoint: 'nope.safetensors' is not in models/clip_guidance",
                                          "open_clip checkpoint for GS-Test-Tiny-ViT"]),
    ({"checkpoint": "gs_tiny_rn.safetensors"}, ["checkpoint: models/clip_guidance/gs_tiny_rn.safetensors does not "
                                                "fit the architecture GS-Test-Tiny-ViT"]),
    ({"checkpoint": "needs_pickle.pt"}, ["needs_pickle.pt needs full unpickling"]),
    ({"precision": "fp8"}, ["precision: 'fp8' is not one of the accepted values"]),
], ids=["missing", "wrong-architecture", "pickle", "precision"])
def test_loader_errors_are_clear(host, clip_guidance, inputs, texts):
    result, server = host.run(loader_prompt(**inputs), expect_success=False)
    assert not result["success"]
    message = host.node_error(server)
    for text in texts:
        assert text in message, message
    assert str(clip_guidance) not in message  # no server paths


def test_no_socket_is_opened_offline(host, clip_guidance, captured, records, monkeypatch):
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    host.run(loader_prompt())
    assert guided_steps(records, "x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result, server = host.run(loader_prompt(architecture="ViT-B-32", download=True), expect_success=False)
    assert "HF_HUB_OFFLINE" in host.node_error(server)
    assert attempts == []
