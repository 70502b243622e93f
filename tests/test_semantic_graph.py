"""CLIP semantic guidance through the real executor: tiny SD1.x model, tiny random open_clip towers saved to
models/clip_guidance and read back by the OpenCLIP Loader."""
from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from devkit import graphs
from devkit import harness
from devkit.tolerance import BATCH, ORACLE, PATHS, TWO_RUNS, assert_close_across_paths

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
        latent = graphs.empty_latent(prompt, f"{tag}e", 64, 64, batch)
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
    graphs.empty_latent(prompt, "5", 64, 64, batch=2)
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
    clip = probes.open_clip_module().OpenCLIP.wrap(probes.tiny_open_clip(kind, 0), probes.KINDS[kind], "fp32")
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


def open_clip_module():
    return harness.test_nodes_module().semantic_probes.open_clip_module()


def write_checkpoints(folder) -> None:
    """Bad files next to the fixture's good ones: junk, empty, truncated, no tensors."""
    import folder_paths
    from safetensors.torch import save_file
    good = (folder / "gs_tiny_vit.safetensors").read_bytes()
    (folder / "junk.safetensors").write_bytes(b"this is not a safetensors file")
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    save_file({}, str(folder / "no_tensors.safetensors"))
    torch.save({"state_dict": {}}, str(folder / "no_tensors.pt"))
    (folder / "junk.pt").write_bytes(b"not a torch file either")
    folder_paths.filename_list_cache.pop("clip_guidance", None)


def loader_only(**inputs) -> dict:
    """The loader and an output node that takes its model: nothing else runs."""
    return {"l": {"class_type": "GS_OpenCLIPLoader", "inputs": {
                "precision": "fp32", "download": False, "pretrained": "laion2b_s34b_b79k", **VIT, **inputs}},
            "p": {"class_type": "GS_TestOpenCLIPProbe", "inputs": {"clip_model": ["l", 0]}}}


@pytest.mark.parametrize("inputs,texts", [
    ({"checkpoint": "nope.safetensors"}, ["checkpoint: 'nope.safetensors' is not in models/clip_guidance",
                                          "open_clip checkpoint for GS-Test-Tiny-ViT"]),
    # a valid file of another architecture: the real mismatch, by tensor name and shape
    ({"checkpoint": "gs_tiny_rn.safetensors"}, ["checkpoint: models/clip_guidance/gs_tiny_rn.safetensors does not "
                                                "fit the architecture GS-Test-Tiny-ViT: ", "expects [",
                                                "tensors of GS-Test-Tiny-ViT are missing (visual."]),
    ({"architecture": "ViT-B-32"}, ["gs_tiny_vit.safetensors does not fit the architecture ViT-B-32: ",
                                    "the file has visual.conv1.weight [64,3,16,16], ViT-B-32 expects [768,3,32,32]"]),
    ({"checkpoint": "needs_pickle.pt"}, ["needs_pickle.pt needs full unpickling"]),
    ({"checkpoint": "junk.safetensors"}, ["checkpoint: models/clip_guidance/junk.safetensors is not a readable "
                                          "safetensors file", "empty, truncated or not safetensors"]),
    ({"checkpoint": "empty.safetensors"}, ["checkpoint: models/clip_guidance/empty.safetensors is not a readable "
                                           "safetensors file"]),
    ({"checkpoint": "truncated.safetensors"}, ["checkpoint: models/clip_guidance/truncated.safetensors is not a "
                                               "readable safetensors file"]),
    ({"checkpoint": "no_tensors.safetensors"}, ["checkpoint: models/clip_guidance/no_tensors.safetensors holds no "
                                                "tensors (an empty state dict)"]),
    ({"checkpoint": "no_tensors.pt"}, ["checkpoint: models/clip_guidance/no_tensors.pt holds no tensors"]),
    ({"checkpoint": "junk.pt"}, ["checkpoint: models/clip_guidance/junk.pt is not a readable torch file"]),
    ({"precision": "fp8"}, ["precision: 'fp8' is not one of the accepted values"]),
], ids=["missing", "wrong-architecture", "wrong-size", "pickle", "junk", "empty", "truncated", "no-tensors",
        "no-tensors-pt", "junk-pt", "precision"])
def test_loader_errors_are_clear(host, clip_guidance, inputs, texts):
    write_checkpoints(clip_guidance)
    result, server = host.run(loader_only(**inputs), expect_success=False)
    assert not result["success"]
    message = host.node_error(server)
    for text in texts:
        assert text in message, message
    assert str(clip_guidance) not in message  # no server paths
    assert "Error" not in message.split(":")[0]  # the pack's message, not a library's exception name


def test_the_checkpoint_is_read_before_any_architecture_is_built(host, clip_guidance, monkeypatch):
    """A junk file is refused before anything is built; a file of another architecture after a build on the meta
    device only (no memory, no initialisation: ViT-H-14 is 2.3 GiB in fp32)."""
    write_checkpoints(clip_guidance)
    module = open_clip_module()
    builds = []
    create = module._create

    def counting(architecture, config, device="cpu"):
        builds.append((architecture, str(device)))
        return create(architecture, config, device)

    monkeypatch.setattr(module, "_create", counting)
    result, server = host.run(loader_only(architecture="ViT-H-14", checkpoint="junk.safetensors"),
                              expect_success=False)
    assert "junk.safetensors is not a readable safetensors file" in host.node_error(server)
    assert builds == []
    result, server = host.run(loader_only(architecture="ViT-H-14"), expect_success=False)
    assert "does not fit the architecture ViT-H-14" in host.node_error(server)
    assert builds == [("ViT-H-14", "meta")]
    host.run(loader_only())
    assert builds[1:] == [("GS-Test-Tiny-ViT", "meta"), ("GS-Test-Tiny-ViT", "cpu")]


@pytest.fixture
def network_guard(monkeypatch, tmp_path):
    """Every DNS look-up, connection and Hugging Face token read is refused and recorded; the Hugging Face cache
    is an empty folder (the user's own cache does not decide the outcome)."""
    import huggingface_hub.constants
    import huggingface_hub.utils._auth as auth
    attempts = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append((what, args[1:2] if what == "connect" else args[:1]))
            raise OSError(f"network disabled by the test ({what})")
        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", refuse("gethostbyname"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
    for name in ("_get_token_from_file", "_get_token_from_environment", "_get_token_from_oidc"):
        monkeypatch.setattr(auth, name, refuse(f"hub token ({name})"))
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield attempts, cache


def test_no_socket_is_opened_offline(host, clip_guidance, captured, records, network_guard):
    attempts, _ = network_guard
    host.run(loader_prompt())
    assert guided_steps(records, "x")
    assert attempts == []
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        result, server = host.run(loader_prompt(architecture="ViT-B-32", download=True), expect_success=False)
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert "HF_HUB_OFFLINE" in host.node_error(server)
    assert attempts == []


# one architecture of each family open_clip 3.3 lists (name -> what makes it a family)
FAMILIES = {
    "ViT-B-32": "CLIP ViT", "RN50": "CLIP ResNet", "coca_ViT-B-32": "CoCa", "convnext_base": "timm tower",
    "EVA02-B-16": "EVA (timm)", "MobileCLIP-S1": "MobileCLIP", "PE-Core-B-16": "Perception Encoder",
    "ViTamin-S": "ViTamin", "ViT-B-16-SigLIP": "SigLIP (hub tokenizer)", "ViT-B-16-SigLIP2": "SigLIP 2",
    "ViT-H-14-CLIPA": "CLIPA (hub tokenizer)", "roberta-ViT-B-32": "hub text tower",
    "xlm-roberta-base-ViT-B-32": "hub text tower", "mt5-base-ViT-B-32": "hub text tower (encoder-decoder)",
    "nllb-clip-base-siglip": "hub text tower + SigLIP", "coca_roberta-ViT-B-32": "CoCa with a hub text tower",
}
HUB = {"ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "ViT-H-14-CLIPA", "roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32",
       "mt5-base-ViT-B-32", "nllb-clip-base-siglip", "coca_roberta-ViT-B-32"}


def test_every_architecture_family_is_loaded_or_refused_without_the_network(host, clip_guidance, network_guard):
    """Download off, the tiny ViT file chosen for a real architecture of each family: the loader refuses (the
    file does not fit, or the hub tokenizer / text tower is not cached) and never resolves a name, connects or
    reads the hub token. Each family's config and tokenizer path are exercised up to the refusal."""
    attempts, _ = network_guard
    import open_clip
    assert set(FAMILIES) <= set(open_clip.list_models())
    for architecture in FAMILIES:
        result, server = host.run(loader_only(architecture=architecture), expect_success=False)
        message = host.node_error(server)
        if architecture in HUB:
            assert message.startswith(f"architecture: {architecture} needs its "), message
            assert "not in the local cache, and download is off" in message and "switch download on" in message
        else:
            assert f"does not fit the architecture {architecture}: " in message, message
        assert attempts == [], (architecture, attempts)


HUB_REPO = "gs-test/tiny-roberta"
HUB_ARCHITECTURE = "GS-Test-Tiny-HubText"


def write_tiny_hub_repo(cache, repo: str = HUB_REPO):
    """A tiny RoBERTa text tower config and a word-level tokenizer as a Hugging Face cache snapshot (the layout a
    download leaves: models--org--name/refs/main -> snapshots/<commit>/)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    words = ["<s>", "<pad>", "</s>", "<unk>", "a", "red", "apple", "castle", "on", "the", "wooden", "table"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(str(snapshot))
    RobertaConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=80, pad_token_id=1).save_pretrained(str(snapshot))
    return snapshot


def register_hub_architecture(folder) -> None:
    import json
    import open_clip
    if HUB_ARCHITECTURE in open_clip.list_models():
        return
    vision = harness.test_nodes_module().semantic_probes.CONFIGS["GS-Test-Tiny-ViT"]["vision_cfg"]
    (folder / f"{HUB_ARCHITECTURE}.json").write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": vision,
        "text_cfg": {"hf_model_name": HUB_REPO, "hf_tokenizer_name": HUB_REPO, "hf_pooler_type": "mean_pooler",
                     "context_length": 16}}))
    open_clip.add_model_config(folder)


def test_a_hub_text_tower_in_the_local_cache_loads_offline(host, clip_guidance, captured, records, network_guard,
                                                           tmp_path):
    """An architecture whose tokenizer and text tower come from the hub (as roberta-ViT-B-32) loads with download
    off when both are in the local Hugging Face cache: no name resolved, no connection, no token read; its weights
    are the file's and its tokenizer is the cached one."""
    attempts, cache = network_guard
    import open_clip
    from open_clip.tokenizer import HFTokenizer
    from safetensors.torch import save_file
    configs = tmp_path / "configs"
    configs.mkdir()
    register_hub_architecture(configs)
    result, server = host.run(loader_only(architecture=HUB_ARCHITECTURE), expect_success=False)
    assert f"needs its tokenizer ({HUB_REPO}) and its text tower configuration ({HUB_REPO})" in host.node_error(server)
    snapshot = write_tiny_hub_repo(cache)
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        config = copy.deepcopy(open_clip.get_model_config(HUB_ARCHITECTURE))
        text = {**config["text_cfg"], "hf_model_name": str(snapshot), "hf_tokenizer_name": str(snapshot),
                "hf_model_pretrained": False}
        reference = open_clip.create_model(HUB_ARCHITECTURE, pretrained=None, pretrained_text=False, text_cfg=text)
    state = {k: v.detach().clone().contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(clip_guidance / "gs_tiny_hub.safetensors"))
    import folder_paths
    folder_paths.filename_list_cache.pop("clip_guidance", None)
    host.run(loader_prompt(architecture=HUB_ARCHITECTURE, checkpoint="gs_tiny_hub.safetensors"))
    assert guided_steps(records, "x")
    assert attempts == []
    loaded = open_clip_module().load_open_clip(HUB_ARCHITECTURE, "gs_tiny_hub.safetensors", "fp32")
    assert attempts == []
    assert set(loaded.model.state_dict()) == set(state)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key  # the file's tensors, loaded as they are
    expected = HFTokenizer(str(snapshot), context_length=16)([TEXT])
    assert torch.equal(loaded.tokenizer([TEXT]), expected)
    assert int(expected[0, 0]) == 4 and int(expected[0, 1]) == 5  # "a red ...": the cached vocabulary
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # restored after the load
        assert variable not in os.environ


def test_a_video_latent_is_refused_naming_the_latent(host, clip_guidance):
    """A 5-D (video) latent reaches the guidance's run start (before any model call): refused naming the latent
    and the shape, instead of a convolution's message from inside the decoder."""
    prompt = graphs.base()
    prompt["v"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                        "batch_size": 1}}
    add_branch(prompt, "x", VIT, guidance_inputs(cutouts=0), steps=2, latent=["v", 0])
    _, server = host.run(prompt, expect_success=False)
    message = host.node_error(server)
    assert message.startswith("latent: CLIP Semantic Guidance works on image latents [batch, channels, height, "
                              "width]; this sampler's latent has shape (1, "), message
    assert message.rstrip().endswith("(a video latent)"), message
