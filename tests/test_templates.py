"""What a new user meets when opening a template: the model files it declares for the frontend's missing-models
dialog (checked against what its nodes load), output prefixes that do not share ComfyUI's file counter, a view
at which the frontend draws text, readable titles, and a distinct thumbnail each."""
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from devkit import harness

WORKFLOWS = harness.example_workflows()
IDS = [p.stem for p in WORKFLOWS]
sys.path.insert(0, str(harness.ROOT / "scripts"))
import workflow_builder  # noqa: E402

# The frontend's test for a widget value naming a model file (missingModelScan's isModelFileName, 1.58.1)
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")
# Where the frontends' missing-models dialog offers a download (1.58.1 and 1.32.9 allow these hosts and, in
# 1.32.9, only these suffixes); other files are listed with their address but not downloaded
DOWNLOAD_HOSTS = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def widget_values(node: dict, node_classes: dict) -> dict:
    """name -> value of a UI-format node's widgets (the order harness.workflow_to_prompt reads them in)."""
    values, index, named = list(node.get("widgets_values") or []), 0, {}
    for name, options in harness._widget_inputs(node_classes[node["type"]]):
        if index < len(values):
            named[name] = values[index]
        index += 1 + bool(options.get("control_after_generate")) + bool(options.get("image_upload"))
    return named


@pytest.fixture(scope="module")
def folder_widgets(host):
    """(node type, widget) -> the model folder its options are listed from, for every node type in a template:
    found by building each node's inputs while folder_paths.get_filename_list answers a marker per folder."""
    import folder_paths

    types = {node["type"] for path in WORKFLOWS for node in load(path)["nodes"]}
    original = folder_paths.get_filename_list
    folder_paths.get_filename_list = lambda folder: [f"<folder {folder}>"]
    try:
        found = {}
        for node_type in sorted(types):
            spec = host.nodes.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
            for section in ("required", "optional"):
                for name, value in spec.get(section, {}).items():
                    extra = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
                    options = value[0] if isinstance(value[0], list) else extra.get("options", [])
                    for option in options if isinstance(options, list) else []:
                        match = re.fullmatch(r"<folder (.+)>", str(option))
                        if match:
                            found[(node_type, name)] = match.group(1)
    finally:
        folder_paths.get_filename_list = original
    assert found[("CheckpointLoaderSimple", "ckpt_name")] == "checkpoints"  # the probe sees the loaders
    assert found[("GS_OpenCLIPLoader", "checkpoint")] == "clip_guidance"
    return found


def loaded_files(workflow: dict, node_classes: dict, folder_widgets: dict) -> dict:
    """node id -> {(file name, folder)} that the node loads when the template runs: the widgets listing a model
    folder, and the files the pack's nodes read by an option's value (the LPIPS trunk, TAESD)."""
    lpips_model = harness.loaded_module("nodes.toolkit.lpips_model")
    checkpoints = {widget_values(node, node_classes).get("ckpt_name") for node in workflow["nodes"]}
    # decoder 'taesd' reads the TAESD decoder of the checkpoint's latent format (taef1_decoder for Flux.1)
    fast = {workflow_builder.FAST_DECODERS[name]["name"] for name in checkpoints
            if name in workflow_builder.FAST_DECODERS}
    loads = {}
    for node in workflow["nodes"]:
        values = widget_values(node, node_classes)
        files = {(values[name], folder) for (kind, name), folder in folder_widgets.items()
                 if kind == node["type"] and values.get(name)}
        if values.get("lpips_net"):
            files.add((lpips_model.HUB_FILES[values["lpips_net"]], lpips_model.FOLDER))
        for option in ("decoder", "loss_decoder"):
            if values.get(option) == "taesd":
                files |= {(name, "vae_approx") for name in fast or {"taesd_decoder.safetensors"}}
        if files:
            loads[node["id"]] = files
    return loads


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_every_model_file_a_template_loads_is_declared_and_every_declared_file_is_loaded(
        host, folder_widgets, path):
    workflow = load(path)
    loads = loaded_files(workflow, host.nodes.NODE_CLASS_MAPPINGS, folder_widgets)
    declared = {node["id"]: {(m["name"], m["directory"]) for m in node["properties"].get("models", [])}
                for node in workflow["nodes"] if node["properties"].get("models")}
    assert declared == loads, f"declared on the nodes {declared}, loaded {loads}"
    everything = {f for files in loads.values() for f in files}
    assert {(m["name"], m["directory"]) for m in workflow.get("models", [])} == everything  # top-level list
    # the frontend (both versions) matches a node's declared files against its widget values
    for node in workflow["nodes"]:
        values = {v for v in node.get("widgets_values") or [] if isinstance(v, str)}
        for model in node["properties"].get("models", []):
            # read by lpips_net's / decoder's value, declared at the top level for the dialog
            if model["directory"] not in ("lpips", "vae_approx"):
                assert model["name"] in values, (node["type"], model)
    # no other widget names a model file (the frontend's scan would look for it)
    for node in workflow["nodes"]:
        named = {(value, folder) for (kind, name), folder in folder_widgets.items() if kind == node["type"]
                 for value in [widget_values(node, host.nodes.NODE_CLASS_MAPPINGS).get(name)] if value}
        files = [v for v in node.get("widgets_values") or [] if isinstance(v, str) and v.endswith(MODEL_SUFFIXES)]
        assert {v for v in files} <= {name for name, _ in named}, (node["type"], files)


def test_declared_model_files_have_one_address_a_public_download_and_a_registered_folder(host):
    import folder_paths

    entries = {}
    for path in WORKFLOWS:
        workflow = load(path)
        for model in workflow.get("models", []) + [m for n in workflow["nodes"] for m in n["properties"].get("models", [])]:
            assert set(model) == {"name", "url", "directory"}, model
            entries.setdefault(model["name"], set()).add((model["url"], model["directory"]))
    assert entries, "no template declares a model file"
    for name, forms in entries.items():
        assert len(forms) == 1, f"{name} is declared in different ways: {forms}"
        url, directory = next(iter(forms))
        assert directory in folder_paths.folder_names_and_paths, directory
        parsed = urlparse(url)
        assert parsed.scheme == "https" and parsed.netloc, url
        assert Path(parsed.path).name == name, "a browser download keeps the server's file name: it must be the name"
        # torchvision's VGG16 comes from download.pytorch.org and TAEF1 from GitHub, listed for the user
        if not name.endswith(".pth"):
            assert url.startswith(DOWNLOAD_HOSTS) and name.endswith(DOWNLOAD_SUFFIXES), url


def test_the_readme_model_table_lists_every_declared_file():
    readme = (harness.ROOT / "README.md").read_text()
    table = readme.split("## Model files", 1)[1].split("\n## ", 1)[0]
    for path in WORKFLOWS:
        for model in load(path).get("models", []):
            row = next((line for line in table.splitlines() if f"`{model['name']}`" in line), None)
            assert row, f"README's Model files table lacks {model['name']}"
            assert f"`models/{model['directory']}/`" in row and model["url"].split("?")[0] in row, row


def save_prefixes() -> dict:
    return {(path.stem, node["id"]): node["widgets_values"][0]
            for path in WORKFLOWS for node in load(path)["nodes"] if node["type"] == "SaveImage"}


def test_output_prefixes_do_not_share_comfyuis_file_counter(host, tmp_path):
    """ComfyUI numbers a prefix's files from the highest number among the files named prefix + "_" + digits, so
    prefix P_360 (a file P_360_00001_.png) makes P's next file P_00361_.png. No prefix may extend another."""
    import folder_paths

    prefixes = save_prefixes()
    assert len(set(prefixes.values())) == len(prefixes), "two Save Image nodes share a prefix"
    for a in prefixes.values():
        for b in prefixes.values():
            assert a == b or not b.startswith(a), f"{b!r} extends {a!r}"
    for prefix in prefixes.values():  # what ComfyUI itself computes, with every other template's file saved
        for other in prefixes.values():
            if other != prefix:
                folder, name = folder_paths.get_save_image_path(other, str(tmp_path))[:2]
                Path(folder).mkdir(parents=True, exist_ok=True)
                (Path(folder) / f"{name}_00001_.png").touch()
        counter = folder_paths.get_save_image_path(prefix, str(tmp_path))[2]
        assert counter == 1, f"{prefix} would start at {counter}"
        for file in tmp_path.rglob("*.png"):
            file.unlink()


def test_the_counter_check_catches_the_old_panorama_prefixes(tmp_path):
    """The collision the prefixes avoid, as ComfyUI computes it."""
    harness.put_host_first()
    import folder_paths

    (tmp_path / "guided_synthesis").mkdir()
    (tmp_path / "guided_synthesis" / "panorama_360_00001_.png").touch()
    assert folder_paths.get_save_image_path("guided_synthesis/panorama", str(tmp_path))[2] == 361


def test_template_titles_are_readable():
    """The frontend (1.32.9 and 1.58.1) shows a pack's template under its file name, and the name with - and _
    replaced by spaces as its description: so the file names are titles, not identifiers."""
    for name in IDS:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9+ ]{8,45}", name), name
        assert "_" not in name and "-" not in name and "  " not in name, name
    assert len({name.lower() for name in IDS}) == len(IDS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_each_template_opens_at_a_zoom_that_draws_text(path):
    """In a 1600 x 1000 window: the frontend fits a template it opens to the window (fitToBounds, zoom 0.75, boxes
    padded by 10 px; 1.58.1) or restores its saved view (extra.ds; 1.32.9). Both must show every node at a scale
    of at least 0.6 (LiteGraph draws no text below it). Node boxes are the saved ones, title bar included."""
    workflow = load(path)
    left, top, width, height = workflow_builder.node_bounds(workflow["nodes"])
    fit = 0.75 * min(1600 / width, 1000 / height)
    assert fit >= 0.6, f"the frontend's fit shows {path.stem} at {fit:.2f}; compact its layout"
    ds = workflow["extra"]["ds"]
    assert 0.6 <= ds["scale"] <= 1.0 and abs(ds["scale"] - min(fit, 1.0)) < 1e-3, ds
    for node in workflow["nodes"]:
        x0 = (node["pos"][0] + ds["offset"][0]) * ds["scale"]
        y0 = (node["pos"][1] - 30 + ds["offset"][1]) * ds["scale"]
        x1 = (node["pos"][0] + node["size"][0] + ds["offset"][0]) * ds["scale"]
        y1 = (node["pos"][1] + node["size"][1] + ds["offset"][1]) * ds["scale"]
        assert 0 <= x0 and x1 <= 1600 and 0 <= y0 and y1 <= 1000, (node["id"], node["type"], (x0, y0, x1, y1))


def test_thumbnails_are_distinct_pictures():
    """Each template has its own thumbnail (example_workflows/<name>.jpg, a square the template browser shows),
    and no two look alike: mean absolute difference of the 64 x 64 greyscale images above 4 % of the range."""
    pictures = {}
    for path in WORKFLOWS:
        image = Image.open(path.with_suffix(".jpg"))
        assert image.size[0] == image.size[1] >= 256, (path.stem, image.size)
        pictures[path.stem] = np.asarray(image.convert("L").resize((64, 64)), np.float32)
    names = sorted(pictures)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            difference = np.abs(pictures[a] - pictures[b]).mean()
            assert difference > 0.04 * 255, f"{a} and {b} thumbnails differ by {difference:.1f} of 255"
