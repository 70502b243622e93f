"""GradOP+ nodes through ComfyUI's real executor with the tiny seeded models."""
import gc
import json
import re
import weakref

import pytest
import torch

from devkit import graphs
from devkit import harness
from devkit.tolerance import PATHS, TWO_RUNS, assert_close_across_paths

LEVEL_LOG = re.compile(r"(GradOP\S*).* iteration (\d+) at sigma ([\d.]+): painting loss ([\d.e+-]+) -> ([\d.e+-]+)")


def run_gradop(host, kind="sd15", strokes_kw=None, capture_images=False, **overrides):
    prompt = graphs.base(kind)
    image = graphs.strokes(prompt, "10", **(strokes_kw or {}))
    out = graphs.gradop(prompt, "11", image, **overrides)
    graphs.capture(prompt, "12", "gradop", latent=out)
    if capture_images:
        graphs.capture(prompt, "13", "optimised", image=["11", 1])
    host.run(prompt)
    return harness.test_nodes_module().CAPTURED["gradop"]


def optimisation_log(caplog):
    return [(m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5)))
            for m in (LEVEL_LOG.search(r.getMessage()) for r in caplog.records) if m]


def test_defaults_optimise_at_the_reference_levels_and_the_loss_falls(host, captured, caplog):
    caplog.set_level("INFO")
    run_gradop(host, capture_images=True)  # 50 ddim_uniform steps, strength 0.8, 3 x 12 Adam steps
    log = optimisation_log(caplog)
    assert [entry[1] for entry in log] == [1, 2, 3]
    assert [entry[2] for entry in log] == pytest.approx([4.69, 4.30, 3.95], abs=0.01)  # t = 781, 761, 741
    for _, _, _, first, last in log:
        assert last < first
    assert captured["optimised"].shape == (3, 32, 32, 3)  # one decoded optimisation result per iteration


def test_zero_gradient_steps_reproduce_plain_sampling(host, captured):
    ours = run_gradop(host, steps=12, grad_steps=0)
    prompt = graphs.base()
    graphs.empty_latent(prompt, "20")
    prompt["21"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["20", 0], "seed": 7,
        "steps": 12, "cfg": 5.0, "sampler_name": "euler", "scheduler": "ddim_uniform", "denoise": 1.0}}
    graphs.capture(prompt, "22", "plain", latent=["21", 0])
    host.run(prompt)
    assert_close_across_paths(ours, captured["plain"], rtol=1e-5, why=PATHS)


def sampler_form(prompt, node_id, strokes_image, **overrides):
    inputs = {"sampler_name": "euler", "vae": ["1", 2], "strokes": strokes_image, **graphs.GRADOP_METHOD}
    inputs.update(overrides)
    prompt[node_id] = {"class_type": "GS_GradOPPlusSampler", "inputs": inputs}
    return [node_id, 0]


def custom_advanced(prompt, sampler, key, model=("1", 0), steps=12):
    latent = graphs.empty_latent(prompt, "30")
    sigmas = graphs.basic_scheduler(prompt, "31", steps, "ddim_uniform", model=model)
    out = graphs.sampler_custom_advanced(prompt, "34", "33", "32", sampler, sigmas, latent, 7, model=model)
    graphs.capture(prompt, "35", key, latent=out)


def test_sampler_form_composes_with_sampler_custom_advanced_and_a_model_patch(host, captured, caplog):
    caplog.set_level("INFO")
    prompt = graphs.base()
    image = graphs.strokes(prompt, "10")
    graphs.ksampler_select(prompt, "40")
    custom_advanced(prompt, ["40", 0], "plain")
    host.run(prompt)

    prompt = graphs.base()
    image = graphs.strokes(prompt, "10")
    custom_advanced(prompt, sampler_form(prompt, "40", image, grad_steps=0), "zero")
    host.run(prompt)
    assert_close_across_paths(captured["zero"], captured["plain"], rtol=1e-5, why=PATHS)

    caplog.clear()
    prompt = graphs.base()
    image = graphs.strokes(prompt, "10")
    prompt["41"] = {"class_type": "RescaleCFG", "inputs": {"model": ["1", 0], "multiplier": 0.7}}
    custom_advanced(prompt, sampler_form(prompt, "40", image, iterative_steps=2, grad_steps=4), "patched",
                    model=("41", 0))
    host.run(prompt)
    assert len(optimisation_log(caplog)) == 2
    assert (captured["patched"] - captured["plain"]).abs().mean() > 1e-3


def test_pixels_outside_the_mask_do_not_enter_the_loss(host, captured):
    def masked(right):
        prompt = graphs.base()
        image = graphs.strokes(prompt, "10", right=right)
        out = graphs.gradop(prompt, "11", image, steps=10, iterative_steps=2, grad_steps=4)
        prompt["11"]["inputs"]["mask"] = ["10", 1]  # left half only
        graphs.capture(prompt, "12", "masked", latent=out)
        host.run(prompt)
        return captured["masked"]

    a, b = masked(0x2255CC), masked(0x22CC55)  # strokes differ only in the right half
    assert_close_across_paths(a, b, rtol=1e-5, why=TWO_RUNS)  # different strokes outside the mask
    unmasked_a = run_gradop(host, strokes_kw={"right": 0x2255CC}, steps=10, iterative_steps=2, grad_steps=4)
    unmasked_b = run_gradop(host, strokes_kw={"right": 0x22CC55}, steps=10, iterative_steps=2, grad_steps=4)
    assert (unmasked_a - unmasked_b).abs().max() > 1e-4  # the comparison can fail


def test_rgba_and_greyscale_strokes(host, captured):
    rgb = run_gradop(host, steps=8, iterative_steps=1, grad_steps=3)
    for channels in (4, 1):
        prompt = graphs.base()
        image = graphs.strokes(prompt, "10")
        prompt["14"] = {"class_type": "GS_TestImageChannels", "inputs": {"image": image, "channels": channels}}
        out = graphs.gradop(prompt, "11", ["14", 0], steps=8, iterative_steps=1, grad_steps=3)
        graphs.capture(prompt, "12", f"c{channels}", latent=out)
        host.run(prompt)
    assert_close_across_paths(captured["c4"], rgb, rtol=1e-5, why=TWO_RUNS)  # alpha is dropped
    assert torch.isfinite(captured["c1"]).all() and (captured["c1"] - rgb).abs().max() > 0


@pytest.mark.parametrize("overrides, strokes_kw, message", [
    ({"strength": 0.0}, {}, "strength"),
    ({"strength": 1.5}, {}, "strength"),
    ({"steps": 6, "strength": 0.5, "iterative_steps": 5}, {}, "iterative_steps"),
    ({"width": 36}, {}, "multiple of 8"),
])
def test_bad_input_gives_a_clear_error(host, overrides, strokes_kw, message):
    prompt = graphs.base()
    image = graphs.strokes(prompt, "10", **strokes_kw)
    out = graphs.gradop(prompt, "11", image, **overrides)
    graphs.capture(prompt, "12", "bad", latent=out)
    result, server = host.run(prompt, expect_success=False)
    error = host.node_error(server) or json.dumps(result.get("node_errors", {}))  # validation or execution
    assert message in error


def test_wrong_size_mask_is_a_clear_error(host):
    prompt = graphs.base()
    image = graphs.strokes(prompt, "10")
    graphs.strokes(prompt, "15", width=16, height=16)
    out = graphs.gradop(prompt, "11", image, steps=8, iterative_steps=1, grad_steps=1)
    prompt["11"]["inputs"]["mask"] = ["15", 1]
    graphs.capture(prompt, "12", "bad", latent=out)
    _, server = host.run(prompt, expect_success=False)
    error = host.node_error(server)
    assert "mask" in error and "16" in error


@pytest.mark.parametrize("kind", ["sd2_v", "sdxl"])
def test_v_prediction_and_sdxl_models(host, kind, caplog):
    caplog.set_level("INFO")
    optimised = run_gradop(host, kind=kind, steps=10, iterative_steps=2, grad_steps=3)
    plain = run_gradop(host, kind=kind, steps=10, iterative_steps=2, grad_steps=0)
    assert optimised.shape == (1, 4, 4, 4) and torch.isfinite(optimised).all()
    assert (optimised - plain).abs().mean() > 1e-4
    assert len(optimisation_log(caplog)) == 2


def test_batches_sizes_and_seeds(host, captured):
    batch = run_gradop(host, strokes_kw={"batch": 2, "width": 48, "height": 40}, capture_images=True, steps=8,
                       iterative_steps=2, grad_steps=2, batch_size=2, width=32, height=24)
    assert batch.shape == (4, 4, 3, 4)
    assert captured["optimised"].shape == (8, 24, 32, 3)  # 2 iterations x (2 strokes x 2 each)
    again = run_gradop(host, strokes_kw={"batch": 2, "width": 48, "height": 40}, steps=8, iterative_steps=2,
                       grad_steps=2, batch_size=2, width=32, height=24)
    assert_close_across_paths(batch, again, rtol=1e-5, why=TWO_RUNS)
    other_seed = run_gradop(host, strokes_kw={"batch": 2, "width": 48, "height": 40}, steps=8, iterative_steps=2,
                            grad_steps=2, batch_size=2, width=32, height=24, seed=8)
    assert (other_seed - batch).abs().mean() > 1e-3


def test_gradop_reconstruction_mode(host, captured, caplog):
    caplog.set_level("INFO")
    result = run_gradop(host, steps=10, mode="GradOP (reconstruction)", grad_steps=10, capture_images=True)
    log = optimisation_log(caplog)
    assert len(log) == 1 and log[0][0] == "GradOP" and log[0][2] == 0.0  # optimises the finished text sample
    assert log[0][4] < log[0][3]
    assert torch.isfinite(result).all() and captured["optimised"].shape == (1, 32, 32, 3)


def pack_modules():
    return (harness.loaded_module(f"{harness.PACK_NAME}.nodes.gradop"),
            harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients"))


def test_interrupt_stops_within_one_gradient_step_and_the_decoder_copy_is_released(host, monkeypatch):
    import comfy.model_management
    node_module, gradients = pack_modules()
    original_optimise = node_module.gradop.optimise_strokes
    steps_run, copies = [], []

    def interrupting(*args, on_step=None, **kwargs):
        def step(i, loss):
            on_step(i, loss)
            steps_run.append(i)
            if len(steps_run) == 2:
                comfy.model_management.interrupt_current_processing(True)
        return original_optimise(*args, on_step=step, **kwargs)

    original_init = gradients.DifferentiableDecoder.__init__

    def tracking_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        copies.append(weakref.ref(self.module))

    monkeypatch.setattr(node_module.gradop, "optimise_strokes", interrupting)
    monkeypatch.setattr(gradients.DifferentiableDecoder, "__init__", tracking_init)
    try:
        prompt = graphs.base()
        graphs.gradop(prompt, "11", graphs.strokes(prompt, "10"), steps=10, iterative_steps=2, grad_steps=6)
        graphs.capture(prompt, "12", "interrupted", latent=["11", 0])
        _, server = host.run(prompt, expect_success=False)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert any(event == "execution_interrupted" for event, _ in server.messages)
    assert steps_run == [1, 2]  # the third step's check raised
    gc.collect()
    assert copies and all(ref() is None for ref in copies)


def test_shared_model_vae_and_strokes_are_unchanged(host):
    def fingerprint(with_gradop):
        prompt = graphs.base()
        image = graphs.strokes(prompt, "10")
        prompt["20"] = {"class_type": "VAEEncode", "inputs": {"pixels": image, "vae": ["1", 2]}}
        after = None
        if with_gradop:
            after = graphs.gradop(prompt, "11", image, steps=8, iterative_steps=2, grad_steps=3)
        prompt["21"] = {"class_type": "GS_TestFingerprint", "inputs": {"model": ["1", 0], "vae": ["1", 2],
                                                                       "latent": ["20", 0]}}
        if after:
            prompt["21"]["inputs"]["after"] = after
        result, _ = host.run(prompt)
        return result["outputs"]["21"]["gs_fingerprint"][0]

    assert fingerprint(True) == fingerprint(False)


def test_decoder_choices_including_taesd_from_vae_approx(host, vae_approx, caplog):
    caplog.set_level("INFO")
    results = {}
    for decoder in ("fp32", "bf16", "taesd"):
        results[decoder] = run_gradop(host, steps=8, iterative_steps=1, grad_steps=4, decoder=decoder)
    log = optimisation_log(caplog)
    assert len(log) == 3 and all(entry[4] < entry[3] for entry in log)
    assert (results["taesd"] - results["fp32"]).abs().mean() > 1e-4  # a different decoder, a different result


def test_taesd_decoder_missing_file_is_a_clear_error(host):
    prompt = graphs.base()
    out = graphs.gradop(prompt, "11", graphs.strokes(prompt, "10"), steps=8, iterative_steps=1, grad_steps=1,
                        decoder="taesd")
    graphs.capture(prompt, "12", "bad", latent=out)
    _, server = host.run(prompt, expect_success=False)
    assert "vae_approx" in host.node_error(server) and "taesd_decoder" in host.node_error(server)


def test_kl_vae_decoder(host, caplog):
    caplog.set_level("INFO")
    prompt = graphs.base()
    prompt["1"]["inputs"]["vae_kind"] = "kl"
    out = graphs.gradop(prompt, "11", graphs.strokes(prompt, "10"), steps=8, iterative_steps=2, grad_steps=4)
    graphs.capture(prompt, "12", "kl", latent=out)
    host.run(prompt)
    log = optimisation_log(caplog)
    assert len(log) == 2 and all(entry[4] < entry[3] for entry in log)


def test_checkpointed_decoder_memory_gives_the_same_result(host, captured, caplog):
    """decoder_memory 'checkpointed' recomputes the decoder blocks in backward: the same latent as 'full'
    (KL VAE), and 'auto' picks it only when the estimate exceeds half the free memory."""
    caplog.set_level("INFO")
    results = {}
    for memory in ("full", "checkpointed", "auto"):
        prompt = graphs.base()
        prompt["1"]["inputs"]["vae_kind"] = "kl"
        out = graphs.gradop(prompt, "11", graphs.strokes(prompt, "10"), steps=8, iterative_steps=2, grad_steps=4,
                            decoder_memory=memory)
        graphs.capture(prompt, "12", memory, latent=out)
        host.run(prompt)
        results[memory] = captured[memory]
    assert_close_across_paths(results["checkpointed"], results["full"], rtol=1e-5, why=PATHS)
    assert_close_across_paths(results["auto"], results["full"], rtol=1e-5, why=PATHS)
    assert caplog.text.count("decoder copy checkpointed (") == 1  # the 'checkpointed' run only:
    assert "checkpointing the decoder copy" not in caplog.text  # tiny latents, so auto keeps all activations
    gradients = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.gradients")
    assert gradients.use_checkpointing("auto", 6e9, 8e9) and not gradients.use_checkpointing("auto", 3e9, 8e9)
    assert gradients.use_checkpointing("checkpointed", 0, 1) and not gradients.use_checkpointing("full", 9, 1)
    with pytest.raises(ValueError, match="decoder_memory"):
        gradients.use_checkpointing("tiny", 0, 1)


def test_half_resolution_loss(host, captured, caplog):
    caplog.set_level("INFO")
    half = run_gradop(host, capture_images=True, steps=8, iterative_steps=2, grad_steps=4, loss_resolution="half")
    log = optimisation_log(caplog)
    assert len(log) == 2 and all(entry[4] < entry[3] for entry in log)
    assert captured["optimised"].shape == (2, 16, 16, 3)  # the loss saw a 2x pooled latent
    full = run_gradop(host, steps=8, iterative_steps=2, grad_steps=4)
    assert (half - full).abs().mean() > 1e-4


def test_a_decoder_that_cannot_fit_stops_before_the_first_step(host, monkeypatch):
    """The loss decoder's fit check (gradients.decoder_fit) runs before any sampler step and says what fits."""
    import comfy.model_management
    import comfy.utils
    steps = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, **kw: steps.append(value))
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *args, **kwargs: 2 ** 20)
    prompt = graphs.base()
    prompt["1"]["inputs"]["vae_kind"] = "kl"
    out = graphs.gradop(prompt, "11", graphs.strokes(prompt, "10"), steps=8, iterative_steps=1, grad_steps=1)
    graphs.capture(prompt, "12", "bad", latent=out)
    _, server = host.run(prompt, expect_success=False)
    error = host.node_error(server)
    assert error.startswith("GradOP+: an output of 32x32 pixels (batch 1) needs about 0.0 GiB") and \
        "the largest output that fits is about 8x8 pixels" in error and "loss_resolution 'half'" in error, error
    assert steps == []  # no sampler step ran (the same graph with enough memory reports its steps here)


def test_the_config_is_built_from_the_schema_inputs_by_name(host):
    """Each GradOP+ option is declared once: every method input is a GradOPConfig field (by name, or FIELDS), both
    nodes list the same method inputs, and an optional input left out takes the schema's default."""
    import dataclasses
    node_module, _ = pack_modules()
    fields = {f.name for f in dataclasses.fields(node_module.GradOPConfig)}
    specs = [*node_module.method_inputs(), node_module.memory_input()]
    assert {node_module.FIELDS.get(s.id, s.id) for s in specs} <= fields
    for node in (node_module.GradOPPlus, node_module.GradOPPlusSampler):
        ids = [i.id for i in node.define_schema().inputs]
        assert [s.id for s in specs if s.id in ids] == [s.id for s in specs]
    tiny = harness.test_nodes_module().tiny
    strokes = torch.rand(1, 16, 16, 3)
    inputs = {s.id: getattr(s, "default", None) for s in specs if not s.optional}
    inputs.update(sampler_name="dpmpp_2m", vae=tiny.tiny_vae(0), strokes=strokes, strength=0.5, gamma=0.25)
    config = node_module.config_from_inputs(inputs)
    assert (config.sampler_name, config.strength, config.gamma, config.painting) == ("dpmpp_2m", 0.5, 0.25,
                                                                                     "gaussian blur")
    assert config.decoder_memory == "auto" and config.mask is None  # absent optional inputs: the schema's defaults
    assert config.mode == "GradOP+" and config.grad_steps == 12 and config.loss_resolution == "full"
    config = node_module.config_from_inputs({**inputs, "decoder_memory": "checkpointed", "painting_function": "median"})
    assert (config.decoder_memory, config.painting) == ("checkpointed", "median")
