"""Every example workflow runs to completion on the tiny models through the real executor, with the input
paintings the pack copied into the input folder when it loaded (nothing is copied by the tests)."""
import json
import logging
from pathlib import Path

import pytest

from devkit import harness

WORKFLOWS = harness.example_workflows()
INPUTS = harness.WORKFLOWS / "inputs"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_capability_has_an_example_workflow():
    names = {p.stem for p in WORKFLOWS}
    assert {"SDEdit strength sweep", "GradOP+ strokes to photo beside SDEdit"} <= names
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").exists(), f"{path.name} has no thumbnail"


def test_every_pack_node_is_in_an_example_workflow(host):
    """Each node the pack registers (GS_*, not the test-only GS_Test*) is shown in use in some template."""
    ours = {name for name in host.nodes.NODE_CLASS_MAPPINGS
            if name.startswith("GS_") and not name.startswith("GS_Test")}
    assert {"GS_SDEdit", "GS_SDEditSigmas", "GS_GradOPPlus", "GS_GradOPPlusSampler"} <= ours
    used = {node["type"] for path in WORKFLOWS for node in load(path)["nodes"]}
    assert sorted(ours - used) == [], "pack nodes in no example workflow"


def input_references(workflow: dict) -> list[str]:
    """The input-folder files a workflow names: Load Image's file, Stroke Canvas's painting."""
    names = []
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            names.append(node["widgets_values"][0])
        if node["type"] == "GS_StrokeCanvas" and node["widgets_values"][0]:
            names.append(node["widgets_values"][0].removesuffix(" [input]"))
    return names


def test_every_painting_a_workflow_names_is_shipped_and_installed_by_the_pack(host):
    """The files the workflows name are in example_workflows/inputs/ under the same relative path, and the
    pack copied them into the host's input folder when it loaded."""
    import folder_paths

    input_dir = Path(folder_paths.get_input_directory())
    for path in WORKFLOWS:
        for name in input_references(load(path)):
            shipped = INPUTS / name
            assert shipped.is_file(), f"{path.name} names {name!r}, which example_workflows/inputs/ lacks"
            installed = input_dir / name
            assert installed.is_file() and installed.read_bytes() == shipped.read_bytes(), name


def examples_module():
    return harness.loaded_module("nodes.toolkit.examples")


def test_installing_the_examples_never_replaces_a_users_file(host, tmp_path):
    examples = examples_module()
    (tmp_path / "guided_synthesis_strokes.png").write_bytes(b"the user's own painting")
    copied = examples.install_example_inputs(tmp_path)
    assert "guided_synthesis_strokes.png" not in copied
    assert (tmp_path / "guided_synthesis_strokes.png").read_bytes() == b"the user's own painting"
    assert sorted(copied) == sorted(p.name for p in INPUTS.iterdir() if p.name != "guided_synthesis_strokes.png")
    for name in copied:
        assert (tmp_path / name).read_bytes() == (INPUTS / name).read_bytes()
    assert examples.install_example_inputs(tmp_path) == []  # the second load copies nothing


def test_installing_the_examples_logs_instead_of_raising(host, tmp_path, monkeypatch, caplog):
    examples = examples_module()
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("x")
    with caplog.at_level(logging.WARNING, logger="guided_synthesis.examples"):
        assert examples.install_example_inputs(not_a_folder / "input") == []
    assert "could not copy the example painting" in caplog.text

    def read_only(*args, **kwargs):  # what a read-only folder answers (as root, chmod would not stop a write)
        raise PermissionError(13, "Permission denied", str(args[0]))

    caplog.clear()
    monkeypatch.setattr(examples, "open", read_only, raising=False)
    with caplog.at_level(logging.WARNING, logger="guided_synthesis.examples"):
        assert examples.install_example_inputs(tmp_path / "input") == []
    assert "Permission denied" in caplog.text
    assert not any(p.is_file() for p in (tmp_path / "input").iterdir())


def node_boxes(workflow: dict) -> dict:
    """id -> (left, top, right, bottom) of each node with its title bar (LiteGraph's 30 px)."""
    return {node["id"]: (node["pos"][0], node["pos"][1] - 30, node["pos"][0] + node["size"][0],
                         node["pos"][1] + node["size"][1]) for node in workflow["nodes"]}


def overlaps(boxes: dict) -> list:
    items = sorted(boxes.items())
    return [(a, b) for i, (a, p) in enumerate(items) for b, q in items[i + 1:]
            if p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_nodes_do_not_overlap(path):
    """As written by the generator (the browser suite checks the sizes the frontend gives the nodes)."""
    assert overlaps(node_boxes(load(path))) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(host, vae_approx, flow_vae_approx, lpips_models, path):
    """(vae_approx, flow_vae_approx: the TAESD decoders of decoder "taesd", taef1_decoder for the Flux templates)"""
    workflow = load(path)
    prompt = harness.workflow_to_prompt(workflow, host.nodes.NODE_CLASS_MAPPINGS)
    if any(node["class_type"] == "GS_TestTinyFlowCheckpoint" for node in prompt.values()):
        harness.fewer_steps(prompt)  # the Flux templates on the tiny flow model: a few steps keep them cheap
    assert any(n["class_type"].startswith("GS_") and not n["class_type"].startswith("GS_Test") for n in prompt.values())
    result, _ = host.run(prompt)
    images = [image for node in result["outputs"].values() for image in node.get("images", [])]
    assert images, "the workflow saved no image"
    import folder_paths
    for image in images:
        file = Path(folder_paths.get_directory_by_type(image.get("type", "output"))) / image["subfolder"] / image["filename"]
        assert file.exists() and file.stat().st_size > 0
    saved = [image for image in images if image.get("type", "output") == "output"]
    if path.stem == "SDEdit strength sweep":
        assert len(saved) == 3  # one per strength of the sweep
    if path.stem == "GradOP+ strokes to photo beside SDEdit":
        assert sorted(image["filename"].split("_0")[0] for image in saved) == ["gradop_plus", "sdedit_compare"]
    if path.stem == "SDEdit Sigmas in SamplerCustom":
        assert [image["filename"].split("_0")[0] for image in saved] == ["sdedit_sigmas"]
    if path.stem.endswith(" on Flux dev"):  # each saves one image (region words: two), through the tiny flow model
        expected = 2 if path.stem.startswith("Region words") else 1
        assert len(saved) == expected and prompt["1"]["class_type"] == "GS_TestTinyFlowCheckpoint", saved
    if path.stem == "GradOP+ Sampler with region words":
        assert [image["filename"].split("_0")[0] for image in saved] == ["gradop_sampler_regions"]
