"""Every option of every Combo input of every pack node runs at least once through the real executor.

The options are read from the node schemas, so an option added later is run here without touching this
file; a pack node with a Combo input and no graph below fails the enumeration test. Each option runs in
a small working graph on the tiny models (few steps), and its output must be finite; the options of one input
must not all give the same result (the value reaches the computation) unless SAME_RESULT says why they do.
"""
from __future__ import annotations

import pytest
import torch

from devkit import graphs
from devkit import harness
from devkit.tolerance import close_across_paths

TEST_PREFIX = "GS_Test"


def pack_nodes(host) -> dict:
    return {name: cls for name, cls in host.nodes.NODE_CLASS_MAPPINGS.items()
            if name.startswith("GS_") and not name.startswith(TEST_PREFIX)}


def combo_inputs(node_class) -> dict[str, list]:
    """{input name: options} for every Combo input (required and optional) of a node."""
    spec = node_class.INPUT_TYPES()
    combos = {}
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind, options = value[0], (value[1] if len(value) > 1 else {})
            if isinstance(kind, list):
                combos[name] = list(kind)
            elif kind == "COMBO":
                combos[name] = list(options.get("options", []))
    return combos


# --- one small working graph per node; each returns the output to capture -----------------------

def sdedit_graph(prompt, node_id, option):
    image = graphs.solid_image(prompt, "4", 64, 64)
    latent = graphs.encode(prompt, "5", image)
    return graphs.sdedit(prompt, node_id, latent=latent, steps=3, strength=0.6, **option)


def sdedit_sigmas_graph(prompt, node_id, option):
    inputs = {"model": ["1", 0], "scheduler": "normal", "steps": 5, "strength": 0.55, "semantics": "paper",
              **option}
    prompt[node_id] = {"class_type": "GS_SDEditSigmas", "inputs": inputs}
    return [node_id, 0]


GRADOP_SMALL = {"steps": 6, "iterative_steps": 1, "grad_steps": 1, "strength": 0.8}


def gradop_graph(prompt, node_id, option):
    image = graphs.strokes(prompt, "4")
    return graphs.gradop(prompt, node_id, image, **{**GRADOP_SMALL, **option})


def gradop_sampler_graph(prompt, node_id, option):
    image = graphs.strokes(prompt, "4")
    method = {**graphs.GRADOP_METHOD, "iterative_steps": 1, "grad_steps": 1}
    prompt[node_id] = {"class_type": "GS_GradOPPlusSampler", "inputs": {
        "sampler_name": "euler", "vae": ["1", 2], "strokes": image, **method, **option}}
    sigmas = graphs.basic_scheduler(prompt, node_id + "s", 6, "ddim_uniform")
    latent = graphs.empty_latent(prompt, "5")
    return graphs.sampler_custom(prompt, node_id + "c", [node_id, 0], sigmas, latent, 3)


def regions_graph(prompt, node_id, option):
    prompt["4"] = {"class_type": "GS_TestStrokePattern", "inputs": {"pattern": "square", "width": 64, "height": 64}}
    prompt[node_id] = {"class_type": "GS_StrokeRegions", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "stroke": ["4", 0], "prompt": "a castle by the river",
        "region_spec": "red: castle\nblue: river", "strength": 0.5, "mode": "paint_with_words",
        "start_percent": 0.0, "end_percent": 1.0, "missing_phrases": "append", **option}}
    graphs.empty_latent(prompt, "5", 64, 64)
    prompt[node_id + "k"] = {"class_type": "KSampler", "inputs": {
        "model": [node_id, 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": [node_id, 1], "negative": ["3", 0], "latent_image": ["5", 0], "denoise": 1.0}}
    return [node_id + "k", 0]


SEMANTIC_LOADER = {"architecture": "GS-Test-Tiny-ViT", "checkpoint": "gs_tiny_vit.safetensors", "precision": "fp32",
                   "download": False, "pretrained": "laion2b_s34b_b79k"}


def _semantic_sampling(prompt, node_id, clip_model, option):
    prompt["4"] = {"class_type": "GS_TestStrokes", "inputs": {"width": 64, "height": 64, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    prompt[node_id] = {"class_type": "GS_CLIPSemanticGuidance", "inputs": {
        "model": ["1", 0], "vae": ["1", 2], "clip_model": clip_model, "text": "a castle", "text_weight": 0.5,
        "image_weight": 0.5, "image_loss": "both", "cutouts": 1, "start_percent": 0.0, "end_percent": 1.0,
        "every": 1, "decoder": "auto", "step_mode": "normalised", "reference_image": ["4", 0], "mask": ["4", 1],
        **option}}
    graphs.empty_latent(prompt, "5", 64, 64)
    prompt[node_id + "k"] = {"class_type": "KSampler", "inputs": {
        "model": [node_id, 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0], "denoise": 1.0}}
    return [node_id + "k", 0]


def semantic_graph(prompt, node_id, option):
    prompt[node_id + "l"] = {"class_type": "GS_TestTinyOpenCLIP", "inputs": {"kind": "vit", "seed": 0}}
    return _semantic_sampling(prompt, node_id, [node_id + "l", 0], option)


def openclip_loader_graph(prompt, node_id, option):
    prompt[node_id + "l"] = {"class_type": "GS_OpenCLIPLoader", "inputs": {**SEMANTIC_LOADER, **option}}
    return _semantic_sampling(prompt, node_id, [node_id + "l", 0], {})


def _every_architecture_is_an_open_clip_config(host, options):
    import open_clip
    assert "ViT-B-32" in options
    missing = [name for name in options if open_clip.get_model_config(name) is None]
    assert not missing, f"architecture lists names open_clip has no config for: {missing}"


def _checkpoints_are_the_folder_listing(host, options):
    import folder_paths
    assert options == folder_paths.get_filename_list("clip_guidance")


# Combo inputs whose options are the user's environment, not the pack's choices: every open_clip architecture
# (about 140; building one needs its weights, which cannot be had offline, and a random full-size build of each
# would take hours) and the files in models/clip_guidance (the fixture holds deliberately broken ones, which
# tests/test_semantic_graph.py runs for their errors). For these the option list itself is checked, and the
# graph runs with the tiny architecture and its file (SEMANTIC_LOADER), which is one of the listed options.
ENVIRONMENT_LISTS = {
    ("GS_OpenCLIPLoader", "architecture"): _every_architecture_is_an_open_clip_config,
    ("GS_OpenCLIPLoader", "checkpoint"): _checkpoints_are_the_folder_listing,
}


PANORAMA_SMALL = {"window_size": 32, "stride": 32, "sync_weight": 20.0, "window_batch": 2}  # on graphs.SYNCDIFFUSION


def _panorama_sync(option) -> dict:
    # every sampler and scheduler runs as MultiDiffusion here (a sync costs an LPIPS build and a backward per
    # option); test_panorama_graph syncs with a sample of samplers of each kind. LPIPS at 1/4 needs 64 px
    # windows (vgg runs on 16 px and up).
    if "lpips_size" in option:
        return {"window_size": 64, "stride": 64}
    return {"sync_weight": 0.0} if {"sampler_name", "scheduler"} & set(option) else {}


def panorama_graph(prompt, node_id, option):
    method = {**PANORAMA_SMALL, **_panorama_sync(option), **option}
    return graphs.syncdiffusion(prompt, node_id, **{"width": 2 * method["window_size"],
                                                    "height": method["window_size"], "seed": 3, **method})


def panorama_sampler_graph(prompt, node_id, option):
    method = {**PANORAMA_SMALL, **_panorama_sync(option), **option}
    graphs.syncdiffusion_sampler(prompt, node_id, **method)
    sigmas = graphs.basic_scheduler(prompt, node_id + "s", 2, "ddim_uniform")
    latent = graphs.empty_latent(prompt, node_id + "l", 2 * method["window_size"], method["window_size"])
    return graphs.sampler_custom(prompt, node_id + "c", [node_id, 0], sigmas, latent, 3)


GRAPHS = {
    "GS_OpenCLIPLoader": openclip_loader_graph,
    "GS_CLIPSemanticGuidance": semantic_graph,
    "GS_SyncDiffusion": panorama_graph,
    "GS_SyncDiffusionSampler": panorama_sampler_graph,
    "GS_SDEdit": sdedit_graph,
    "GS_SDEditSigmas": sdedit_sigmas_graph,
    "GS_GradOPPlus": gradop_graph,
    "GS_GradOPPlusSampler": gradop_sampler_graph,
    "GS_StrokeRegions": regions_graph,
}

# Nodes known to the pack; the enumeration below must cover these (and fail on a new one with combos).
KNOWN = set(GRAPHS) | {"GS_StrokeCanvas", "GS_SeamlessDecode"}


def test_every_pack_node_with_combo_inputs_has_a_graph_here(host):
    nodes = pack_nodes(host)
    assert set(nodes) == KNOWN, f"pack nodes changed: {sorted(set(nodes) ^ KNOWN)}; add them to GRAPHS"
    missing = [name for name, cls in nodes.items() if combo_inputs(cls) and name not in GRAPHS]
    assert not missing, f"nodes with Combo inputs but no option graph in this file: {missing}"


# Combo inputs whose options give one result on these graphs (CPU, tiny float32 models), with the reason. Every
# other Combo input must change the result with at least one of its options, or its value does not reach the
# computation.
MEMORY_ONLY = "the checkpointed decoder recomputes the same blocks for backward: memory, not the result"
SAME_RESULT: dict[tuple[str, str], str] = {
    ("GS_GradOPPlus", "decoder_memory"): MEMORY_ONLY,
    ("GS_GradOPPlusSampler", "decoder_memory"): MEMORY_ONLY,
    ("GS_SyncDiffusion", "decoder_memory"): MEMORY_ONLY,
    ("GS_SyncDiffusionSampler", "decoder_memory"): MEMORY_ONLY,
    ("GS_StrokeRegions", "missing_phrases"): "the prompt here names every phrase: nothing to append or refuse",
}
# Results that differ by less than this fraction of their scale count as the same result: the same math in
# another order (a checkpointed backward), carried through a few sampler steps, moves them by far less, an
# option that changes the computation by far more.
SAME_RTOL = 1e-3


def check_the_option_reached_the_node(node: str, input_name: str, results: dict) -> None:
    """Each option's output against the first option's: equal (to rounding) for SAME_RESULT inputs, else at least
    one option must give another result."""
    first_option, first = next(iter(results.items()))
    differ = [option for option, value in results.items() if value.shape != first.shape
              or not close_across_paths(value, first, rtol=SAME_RTOL)]
    if (node, input_name) in SAME_RESULT:
        assert not differ, f"{node}.{input_name}: {differ} differ from {first_option!r} ({SAME_RESULT[(node, input_name)]})"
    elif len(results) > 1:
        assert differ, f"{node}.{input_name}: every option gives {first_option!r}'s result: the input has no effect"


def run_options(host, node, input_name, options, kind: str = "sd15") -> dict:
    """All options of one input in one prompt (one branch each); returns {option: captured output}."""
    prompt = graphs.base(kind)
    store = harness.test_nodes_module().CAPTURED
    store.clear()
    for index, option in enumerate(options):
        node_id = str(100 + 10 * index)
        out = GRAPHS[node](prompt, node_id, {input_name: option})
        key = f"opt{index}"
        if node == "GS_SDEditSigmas":
            graphs.capture(prompt, str(101 + 10 * index), key, sigmas=out)
        else:
            graphs.capture(prompt, str(101 + 10 * index), key, latent=out)
    host.run(prompt)
    return {option: store[f"opt{index}"] for index, option in enumerate(options)}


@pytest.mark.parametrize("node", sorted(GRAPHS))
def test_every_combo_option_runs_through_the_executor(host, vae_approx, clip_guidance, lpips_models, node):
    combos = combo_inputs(host.nodes.NODE_CLASS_MAPPINGS[node])
    assert combos, f"{node} has no Combo input"
    for input_name, options in combos.items():
        if (node, input_name) in ENVIRONMENT_LISTS:
            ENVIRONMENT_LISTS[(node, input_name)](host, options)
            assert SEMANTIC_LOADER[input_name] in options
            results = run_options(host, node, input_name, [SEMANTIC_LOADER[input_name]])
            assert all(torch.isfinite(value).all() for value in results.values())
            continue
        try:
            results = run_options(host, node, input_name, options)
        except harness.PromptFailed as error:
            raise AssertionError(f"{node}.{input_name}: {error}") from None
        for option, value in results.items():
            assert torch.isfinite(value).all(), f"{node}.{input_name}={option!r} gave a non-finite result"
        check_the_option_reached_the_node(node, input_name, results)
        for option, value in results.items():
            if node == "GS_SDEditSigmas":
                assert float(value[-1]) == 0.0 and bool((value[:-1] > value[1:]).all()), (option, value)


# The host's own lists (every k-diffusion sampler and scheduler ComfyUI has) run in full on SD1.5 above; on the flow
# model, whose code paths in the pack do not depend on which sampler or scheduler it is, one of each kind runs
# (first-order, ancestral, multistep, SDE, predictor-corrector; the flow 'simple' and the sigma-shaped ones).
HOST_LIST_SAMPLE = {"sampler_name": ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde", "uni_pc"],
                    "scheduler": ["simple", "normal", "karras", "beta"]}


# On the tiny Flux.1 dev the prompt's text barely reaches the image (random weights, a 77-token text beside 16
# image tokens): options that act through the text attention move the final latent by far less than SAME_RTOL.
FLOW_SAME_RESULT = {
    ("GS_StrokeRegions", "mode"): "both modes against their oracle on each joint attention call: "
                                  "tests/test_regions_joint.py",
    ("GS_StrokeRegions", "missing_phrases"): SAME_RESULT[("GS_StrokeRegions", "missing_phrases")],
}


@pytest.mark.parametrize("node", sorted(GRAPHS))
def test_every_pack_option_runs_on_a_flow_transformer(host, vae_approx, clip_guidance, lpips_models, node):
    """Every option the pack defines, on tiny Flux.1 dev (16-channel latents, 2x2 patches, the flow schedule, a
    FluxGuidance value; the graphs' cfg 5 also runs its negative branch) through the real executor."""
    combos = combo_inputs(host.nodes.NODE_CLASS_MAPPINGS[node])
    for input_name, options in combos.items():
        if (node, input_name) in ENVIRONMENT_LISTS:
            options = [SEMANTIC_LOADER[input_name]]
        elif input_name in HOST_LIST_SAMPLE:
            assert set(HOST_LIST_SAMPLE[input_name]) <= set(options), (node, input_name)
            options = HOST_LIST_SAMPLE[input_name]
        try:
            results = run_options(host, node, input_name, options, kind="flux_dev")
        except harness.PromptFailed as error:
            raise AssertionError(f"{node}.{input_name} on Flux.1 dev: {error}") from None
        for option, value in results.items():
            assert torch.isfinite(value).all(), f"{node}.{input_name}={option!r} gave a non-finite result on Flux.1 dev"
        if (node, input_name) in FLOW_SAME_RESULT:
            continue  # runs and is finite; its effect is checked where the reason says
        if (node, input_name) not in ENVIRONMENT_LISTS:
            check_the_option_reached_the_node(node, input_name, results)


@pytest.mark.parametrize("node", ["GS_GradOPPlusSampler", "GS_SyncDiffusionSampler"])
def test_a_sampler_form_never_writes_into_the_sigmas_it_was_given(host, vae_approx, lpips_models, node):
    """uni_pc writes into its sigmas (the last becomes 0.001). The SAMPLER forms hand the host sampler slices of the
    graph's SIGMAS, which ComfyUI's cache shares between identical BasicScheduler nodes: without a copy, a uni_pc
    branch changed the schedule of the branch beside it (NaN with euler_ancestral on Flux.1 dev, and results that
    depended on which branch the executor ran first)."""
    from devkit.tolerance import TWO_RUNS, assert_close_across_paths

    alone = run_options(host, node, "sampler_name", ["euler_ancestral"], kind="flux_dev")["euler_ancestral"]
    for together in (["euler_ancestral", "uni_pc"], ["uni_pc", "euler_ancestral"]):
        results = run_options(host, node, "sampler_name", together, kind="flux_dev")
        assert_close_across_paths(results["euler_ancestral"], alone, rtol=1e-5, why=TWO_RUNS)
