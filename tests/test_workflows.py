"""Every example workflow runs to completion on the tiny models through the real executor."""
import json
import shutil
from pathlib import Path

import pytest

import harness

WORKFLOWS = harness.example_workflows()


def test_every_capability_has_an_example_workflow():
    names = {p.stem for p in WORKFLOWS}
    assert {"sdedit_strokes", "gradop_strokes"} <= names
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").exists(), f"{path.name} has no thumbnail"


def stage_inputs(host) -> None:
    import folder_paths
    for file in (harness.WORKFLOWS / "inputs").glob("*"):
        shutil.copy(file, Path(folder_paths.get_input_directory()) / file.name)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(host, lpips_models, path):
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            assert (harness.WORKFLOWS / "inputs" / node["widgets_values"][0]).exists()
    stage_inputs(host)
    prompt = harness.workflow_to_prompt(workflow, host.nodes.NODE_CLASS_MAPPINGS)
    assert any(n["class_type"].startswith("GS_") and not n["class_type"].startswith("GS_Test") for n in prompt.values())
    result, _ = host.run(prompt)
    images = [image for node in result["outputs"].values() for image in node.get("images", [])]
    assert images, "the workflow saved no image"
    import folder_paths
    for image in images:
        file = Path(folder_paths.get_directory_by_type(image.get("type", "output"))) / image["subfolder"] / image["filename"]
        assert file.exists() and file.stat().st_size > 0
    saved = [image for image in images if image.get("type", "output") == "output"]
    if path.stem == "sdedit_strokes":
        assert len(saved) == 3  # one per strength of the sweep
    if path.stem == "gradop_strokes":
        assert sorted(image["filename"].split("_0")[0] for image in saved) == ["gradop_plus", "sdedit_compare"]
