"""The gradient recipe (nodes/toolkit/gradients.py) inside a real PromptExecutor run (inference mode)."""
import pytest
import torch

from devkit import graphs
from devkit import harness
from devkit.tolerance import PATHS, assert_close_across_paths


def probe_prompt(with_probe: bool) -> dict:
    prompt = graphs.base()
    image = graphs.solid_image(prompt, "10")
    latent = graphs.encode(prompt, "11", image)
    if with_probe:
        prompt["4"] = {"class_type": "GS_TestGradientProbe", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "latent": latent, "positive": ["2", 0], "sigma": 3.0,
            "use_recipe": True}}
        prompt["5"] = {"class_type": "GS_TestFingerprint", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "latent": latent, "after": ["4", 0]}}
    prompt["6"] = {"class_type": "GS_TestFingerprint", "inputs": {"model": ["1", 0], "vae": ["1", 2], "latent": latent}}
    # A second branch using the same upstream MODEL, VAE and LATENT.
    prompt["7"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": latent, "seed": 3,
        "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.7}}
    prompt["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}}
    graphs.capture(prompt, "9", "branch", image=["8", 0])
    return prompt


def test_gradients_flow_through_unet_and_decoder_and_upstream_is_unchanged(host, captured):
    result, server = host.run(probe_prompt(with_probe=True))
    outputs = result["outputs"]
    grads = outputs["4"]["gs_gradients"][0]
    assert grads["unet_finite"] and grads["vae_finite"]
    assert grads["unet_norm"] > 1e-8, grads
    assert grads["vae_norm"] > 1e-8, grads
    assert grads["image_shape"] == [1, 3, 64, 64]

    after_probe = outputs["5"]["gs_fingerprint"][0]
    assert after_probe["weight_wrappers"] == 0, "weight wrappers leaked onto the upstream ModelPatcher"
    order = harness.executed_order(server)
    assert order.index("4") < order.index("5"), order
    assert order.index("4") < order.index("7"), f"the probe must run before the second branch: {order}"
    branch_with_probe = captured["branch"].clone()

    # The same (seeded) upstream objects in a graph without the probe are the untouched reference.
    result, _ = host.run(probe_prompt(with_probe=False))
    untouched = result["outputs"]["6"]["gs_fingerprint"][0]
    assert after_probe == untouched, "MODEL, VAE or LATENT changed after the gradient probe"
    # two separate runs: equal to float rounding (not bit for bit: kernels differ between CPUs)
    assert_close_across_paths(branch_with_probe, captured["branch"], rtol=1e-5, why=PATHS)


def test_naive_backprop_really_fails_in_the_executor(host):
    """Guards the premise: without the recipe, backprop through upstream weights fails."""
    prompt = graphs.base()
    prompt["4"] = {"class_type": "GS_TestGradientProbe", "inputs": {
        "model": ["1", 0], "vae": ["1", 2], "latent": graphs.encode(prompt, "11", graphs.solid_image(prompt, "10")),
        "positive": ["2", 0], "sigma": 1.0, "use_recipe": False}}
    result, server = host.run(prompt, expect_success=False)
    assert not result.get("success", True)
    assert "Inference tensors cannot be saved for backward" in host.node_error(server)


def test_decoder_copy_matches_vae_decode_for_taesd_and_kl_vaes(host):
    """The pack-owned decoder copy gives VAE.decode's image, with autograd, for both VAE families."""
    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    tiny = harness.test_nodes_module().tiny
    for vae_factory in (tiny.tiny_vae, tiny.tiny_kl_vae):
        with torch.inference_mode():  # as the executor runs nodes
            vae = vae_factory(4)
            latent = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
            reference = vae.decode(latent).movedim(-1, 1)
            with gradients.DifferentiableDecoder(vae) as decoder, gradients.grad_enabled():
                z = gradients.owned(latent).requires_grad_(True)
                image = decoder.decode(z, clamp=True)
                image.mean().backward()
                assert z.grad is not None and z.grad.abs().sum() > 0
        assert_close_across_paths(image.detach().cpu(), reference.float().cpu(), rtol=1e-4, why=PATHS)
        assert all(p.grad is None for p in vae.first_stage_model.parameters())  # the shared VAE got no grad


def test_checkpointed_decoder_gives_the_same_gradient_with_less_memory(host):
    """Activation checkpointing of the decoder copy's blocks: identical image and gradient, and a lower
    peak of tensor memory over forward + backward (measured op by op, CPU)."""
    from devkit import memory_probe

    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    tiny = harness.test_nodes_module().tiny
    # at most this share of the full peak: the KL decoder is all blocks; TAESD keeps full-size convs between them
    for vae_factory, share in ((tiny.tiny_kl_vae, 0.6), (tiny.tiny_vae, 0.9)):
        results = {}
        with torch.inference_mode():
            vae = vae_factory(5)
            latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
            target = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
            for checkpointed in (False, True):
                with gradients.DifferentiableDecoder(vae, checkpointed=checkpointed) as decoder, \
                        gradients.grad_enabled():
                    assert (decoder.checkpointed_blocks > 0) == checkpointed
                    z = gradients.owned(latent).requires_grad_(True)

                    def step():
                        image = decoder.decode(z, clamp=True)
                        ((image - target) ** 2).mean().backward()
                        return image

                    peak = memory_probe.peak_extra_bytes(step)
                    results[checkpointed] = (decoder.decode(z).detach(), z.grad.detach().clone(), peak)
        (image, grad, peak), (image_ck, grad_ck, peak_ck) = results[False], results[True]
        assert_close_across_paths(image_ck, image, rtol=1e-5, why=PATHS)
        assert_close_across_paths(grad_ck, grad, rtol=1e-5, why=PATHS)
        print(f"\n{vae_factory.__name__}: peak tensor memory fwd+bwd {peak / 2**20:.1f} MiB -> "
              f"{peak_ck / 2**20:.1f} MiB checkpointed")
        assert peak_ck < share * peak, (vae_factory.__name__, peak, peak_ck)


def test_loss_decoder_spec_is_cheap_in_model_options_and_follows_the_vae_downscale_ratio(host):
    """The decoder factory's holder survives ModelPatcher.clone() (which deep-copies model_options) as the same
    object, never holds a decoder copy, and sizes everything by the VAE's own downscale ratio."""
    from types import SimpleNamespace

    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    tiny = harness.test_nodes_module().tiny
    with torch.inference_mode():
        model, vae = tiny.tiny_model("sd15", 0), tiny.tiny_kl_vae(0)
        spec = gradients.LossDecoderSpec(vae, "fp32", "checkpointed", "test")
        holder = model.clone()
        holder.model_options["gs_test_loss_decoder"] = spec
        assert holder.clone().model_options["gs_test_loss_decoder"] is spec
        with spec.build(model.model.latent_format, 1, (4, 4)) as decoder:
            assert isinstance(decoder, gradients.DifferentiableDecoder) and decoder.checkpointed_blocks > 0
    assert not hasattr(spec, "module") and spec.ratio == 8
    assert not spec.reduced_precision and spec.loss_scale(3 * 32 * 32) == 1.0
    assert gradients.LossDecoderSpec(vae, "bf16").loss_scale(3 * 32 * 32) == 3 * 32 * 32
    assert gradients.LossDecoderSpec(SimpleNamespace(downscale_ratio=16), "fp32").ratio == 16
    assert gradients.LossDecoderSpec(SimpleNamespace(downscale_ratio=16), "taesd").ratio == 8
    assert gradients.downscale_ratio(SimpleNamespace(), "auto") == 8
    with pytest.raises(ValueError, match="downscale ratio"):
        gradients.downscale_ratio(SimpleNamespace(downscale_ratio=(4, 8, 8)), "auto")
    with pytest.raises(ValueError, match="decoder must be one of"):
        gradients.LossDecoderSpec(vae, "fp8")
    with pytest.raises(ValueError, match="decoder_memory must be one of"):
        gradients.LossDecoderSpec(vae, "auto", "tiny")
    # the fit error: the largest output that fits, in multiples of the ratio
    with pytest.raises(ValueError, match=r"test: an output of 1024x1024 pixels .* about 496x496 pixels\. Less\."):
        gradients.decoder_fit(1, 1024, 1024, 32, 7200 * 500 * 500, 16, "test", "Less.")


def test_model_files_find_file_names_the_input_the_folder_and_the_file(host, tmp_path):
    """The one model-file lookup: the first listed match, else a fallback path, else an error naming the input, the
    folder and the file expected (or the method's own wording)."""
    import folder_paths
    model_files = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.model_files")
    folder = tmp_path / "gs_find_file"
    folder.mkdir()
    for name in ("b_vgg.pth", "a_vgg.pth", "other.pth"):
        (folder / name).write_bytes(b"x")
    folder_paths.folder_names_and_paths["gs_find_file"] = ([str(folder)], {".pth"})
    folder_paths.filename_list_cache.pop("gs_find_file", None)
    try:
        name, path = model_files.find_entry("gs_find_file", "net", "a vgg file", lambda n: "vgg" in n)
        assert (name, path) == ("a_vgg.pth", str(folder / "a_vgg.pth"))  # ComfyUI's sorted list: the first match
        fallback = tmp_path / "hub.pth"
        fallback.write_bytes(b"x")
        assert model_files.find_file("gs_find_file", "net", "x", lambda n: False, (str(fallback),)) == str(fallback)
        with pytest.raises(ValueError) as error:
            model_files.find_file("gs_find_file", "net", "an alex file", lambda n: "alex" in n)
        assert str(error.value) == ("net: needs an alex file in models/gs_find_file (files found: a_vgg.pth, "
                                    "b_vgg.pth, other.pth)")
        with pytest.raises(ValueError, match="^custom 3$"):
            model_files.find_file("gs_find_file", "net", "x", lambda n: False, missing=lambda names: f"custom {len(names)}")
        assert model_files.listed("gs_no_such_folder") == []
    finally:
        folder_paths.folder_names_and_paths.pop("gs_find_file", None)
        folder_paths.filename_list_cache.pop("gs_find_file", None)


def test_owned_modules_are_frozen_placed_and_released(host):
    """The one way the pack owns a frozen copy (decoder, CLIP, LPIPS): no parameter needs grad, eval mode, the
    requested dtype with normal (non-inference) weights even when owned inside inference mode; close() releases."""
    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    with torch.inference_mode():
        with gradients.inference_mode_off():
            module = torch.nn.Sequential(torch.nn.Dropout(0.5))
            module.weight = torch.nn.Parameter(torch.randn(3, 3))
        owner = gradients.OwnedModule()
        with owner:
            owned = owner.own(module, dtype=torch.float64)
            assert owned is module and owner.module is module
            assert not module.training
            assert all(not p.requires_grad and not p.is_inference() and p.dtype == torch.float64
                       for p in module.parameters())
        assert owner.module is None
