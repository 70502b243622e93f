"""End to end: the real ComfyUI server (main.py --cpu) with the pack and the tiny test nodes."""
import json
import urllib.parse
import urllib.request
import uuid

import pytest

from devkit import graphs
from devkit import harness
from devkit.server_support import http, running_server, wait_for

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # input/ starts empty, as on a fresh install: the pack copies the example paintings when it loads.
    with running_server(tmp_path_factory.mktemp("server")) as running:
        yield running


def test_object_info_lists_the_pack(server):
    info = http(server["url"] + "/object_info")
    ours = {name: spec for name, spec in info.items() if name.startswith("GS_") and not name.startswith("GS_Test")}
    assert {"GS_SDEdit", "GS_SDEditSigmas"} <= set(ours)
    for name, spec in ours.items():
        assert spec["category"].startswith("guided_synthesis/"), name
        assert spec["description"], name
    log = server["log"].read_text()
    assert "ComfyUI version: 0.3.75" in log or "0.3.75" in log
    assert not [line for line in log.splitlines()
                if "guided_synthesis" in line and ("Cannot import" in line or "IMPORT FAILED" in line)], log[-3000:]


def test_example_workflows_are_served_as_templates(server):
    templates = http(server["url"] + "/workflow_templates")
    # (a set: the listing repeats a pack found in two custom_nodes folders, as with the host's own link here)
    assert set(templates.get(harness.PACK_NAME, [])) == {p.stem for p in harness.example_workflows()}, templates


def test_the_pack_copied_the_example_paintings_into_the_empty_input_folder(server):
    for file in (harness.WORKFLOWS / "inputs").iterdir():
        copied = server["base"] / "input" / file.name
        assert copied.is_file() and copied.read_bytes() == file.read_bytes(), file.name


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


class Spec:  # object_info entry -> INPUT_TYPES() shape the converter reads
    def __init__(self, entry):
        self.entry = entry

    def INPUT_TYPES(self):
        return self.entry["input"]


def test_every_template_runs_as_downloaded(server):
    """Each template as the template browser gets it (GET /workflow_templates, then the JSON from the
    route ComfyUI serves a pack's example_workflows/ at, /api/workflow_templates/<pack>/<name>.json),
    queued with POST /prompt on the tiny models, with no file copied by hand: Load Image and Stroke Canvas
    read the paintings the pack installed (the tiny swaps keep the file names). Fewer sampling steps than
    the templates' (harness.fewer_steps): tests/test_workflows.py runs them with their own values."""
    info = http(server["url"] + "/object_info")
    specs = {name: Spec(entry) for name, entry in info.items()}
    names = sorted(set(http(server["url"] + "/workflow_templates")[harness.PACK_NAME]))
    assert names
    queued = {}
    for name in names:
        base = f"{server['url']}/api/workflow_templates/{harness.PACK_NAME}/{urllib.parse.quote(name)}"
        workflow = json.loads(fetch(base + ".json"))
        assert fetch(base + ".jpg")[:2] == b"\xff\xd8"  # the thumbnail the browser shows
        prompt = harness.fewer_steps(harness.workflow_to_prompt(workflow, specs))
        # templates that read a painting read the file the pack installed, through the tiny swaps (text-to-image
        # templates - panoramas, CLIP guidance - read none)
        reads = sum(node["type"] in ("LoadImage", "GS_StrokeCanvas") for node in workflow["nodes"])
        swapped = sum(node["class_type"] in ("GS_TestLoadImageSmall", "GS_TestStrokeCanvasSmall")
                      for node in prompt.values())
        assert reads == swapped, name
        response = http(server["url"] + "/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        assert not response.get("node_errors"), (name, response)
        queued[name] = response["prompt_id"]
    for name, prompt_id in queued.items():
        entry = wait_for(server, prompt_id, timeout=600)
        assert entry["status"]["status_str"] == "success", (name, json.dumps(entry["status"])[:3000])
        images = [image for node in entry["outputs"].values() for image in node.get("images", [])]
        assert images, name
        for image in images:  # read back as the browser shows them
            query = urllib.parse.urlencode({key: image[key] for key in ("filename", "subfolder", "type")})
            assert fetch(f"{server['url']}/view?{query}")[:8] == b"\x89PNG\r\n\x1a\n", (name, image)
        if name == "SDEdit strength sweep":
            assert len(images) == 3  # one per strength of the sweep


def test_bad_input_reports_an_error_and_the_server_survives(server):
    prompt = graphs.base()
    latent = graphs.empty_latent(prompt, "30", 64, 64)
    out = graphs.sdedit(prompt, "4", latent=latent, seed=0, steps=4, strength=0.5, strength_sweep="0.5, nope")
    graphs.capture(prompt, "5", "x", latent=out)
    response = http(server["url"] + "/prompt", {"prompt": prompt, "client_id": "t"})
    entry = wait_for(server, response["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    messages = json.dumps(entry["status"]["messages"])
    assert "strength_sweep: 'nope' is not a number" in messages
    assert http(server["url"] + "/system_stats")["system"]
