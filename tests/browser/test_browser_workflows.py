"""Every example workflow, loaded and run in the real ComfyUI frontend (headless Chromium), on each frontend.

Each workflow in example_workflows/ is fetched as the template browser does (the pack's list from
/workflow_templates, the JSON from /api/workflow_templates/<pack>/<name>.json) and loaded with
app.loadGraphData, on a server whose input/ folder only holds what the pack put there when it loaded (no
file copied by hand). It is checked for missing node types, for nodes overlapping at the sizes the frontend
gives them, and for console errors beyond a stock page's; then - in the browser graph - its
CheckpointLoaderSimple / LoadImage / Stroke Canvas / EmptyLatentImage nodes are swapped for the tiny test
nodes (see browser_support.BROWSER_SWAPS, the same swaps as harness.TINY_SWAPS; Load Image keeps its file
name), the sampling steps are reduced (as harness.fewer_steps; tests/test_workflows.py runs the templates'
own values), it is queued with the frontend's own queuePrompt, and its output images must appear on the
output nodes.
"""
import json
import urllib.parse
import urllib.request

import pytest

import browser_support as bs
from devkit import harness

pytestmark = pytest.mark.server

WORKFLOWS = harness.example_workflows()
OUTPUT_TYPES = ("SaveImage", "PreviewImage")


def test_the_page_loads_the_pack_without_new_errors(shared_page, baseline, server):
    page = shared_page
    extensions = bs.http_json(server.url + "/extensions")
    ours = [e for e in extensions if e.startswith(f"/extensions/{harness.PACK_NAME}/")]
    assert f"/extensions/{harness.PACK_NAME}/widgets/stroke_canvas.js" in ours, extensions
    registered = page.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")
    assert {"GS_SDEdit", "GS_StrokeCanvas", "GS_TestTinyCheckpoint"} <= set(registered)
    extension_names = page.page.evaluate("() => window.app.extensions.map((e) => e.name)")
    # registered under the namespace comfy-test lint derives from pyproject's DisplayName ("Guided Synthesis")
    assert {"guidedsynthesis.core", "guidedsynthesis.stroke_canvas", "guidedsynthesis.palette_editor"} <= set(
        extension_names), extension_names
    page.screenshot("01-page-with-pack")
    assert page.new_errors(baseline) == []
    assert "IMPORT FAILED" not in "\n".join(l for l in server.log().splitlines() if harness.PACK_NAME in l)


# As the template browser opens a custom node pack's template: the list, then the JSON from the pack's route.
OPEN_TEMPLATE = """async ([pack, name]) => {
  const api = window.comfyAPI.api.api;
  const listed = (await api.getWorkflowTemplates())[pack] || [];
  const response = await fetch(api.apiURL(`/workflow_templates/${pack}/${name}.json`));
  if (!response.ok) return { listed, status: response.status };
  const text = await response.text();
  await window.app.loadGraphData(JSON.parse(text), true, true, name);
  return { listed, status: response.status, text };
}"""

# Pairs of nodes whose boxes (title bar included) overlap, at the sizes the frontend gave them.
OVERLAPS = """(ignore) => {
  const title = window.LiteGraph.NODE_TITLE_HEIGHT;
  const boxes = window.app.graph.nodes.filter((n) => !ignore.includes(String(n.id)))
    .map((n) => [n.id, n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
  const out = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
    if (a[1] < b[3] && b[1] < a[3] && a[2] < b[4] && b[2] < a[4]) out.push([a, b]);
  }));
  return out;
}"""

FEWER_STEPS = """() => { for (const n of window.app.graph.nodes) for (const w of n.widgets || []) {
  if (w.name === 'steps') w.value = Math.min(w.value, 4);
  if (w.name === 'grad_steps') w.value = Math.min(w.value, 2);
} }"""


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_and_runs_in_the_browser(shared_page, baseline, server, path):
    page = shared_page  # one page for all workflows; each loads its own graph (clean) into it
    since = len(page.errors)
    workflow = json.loads(path.read_text())
    missing = page.page.evaluate(
        "(wf) => [...new Set(wf.nodes.map((n) => n.type))].filter((t) => !(t in window.LiteGraph.registered_node_types))",
        workflow)
    assert missing == [], f"{path.name}: node types missing in the UI: {missing}"
    # No file was copied by hand: the paintings the workflow names are the ones the pack installed.
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            assert (server.input_dir / node["widgets_values"][0]).is_file()

    opened = page.page.evaluate(OPEN_TEMPLATE, [harness.PACK_NAME, path.stem])
    assert path.stem in opened["listed"] and opened["status"] == 200, opened
    assert json.loads(opened["text"]) == workflow  # the route serves the file as it is in example_workflows/
    # (String: the newer frontend gives the loaded nodes string ids)
    loaded = page.page.evaluate("() => window.app.graph.nodes.map((n) => [String(n.id), n.type])")
    assert sorted(loaded) == sorted([str(n["id"]), n["type"]] for n in workflow["nodes"])
    if any(n["type"] == "GS_StrokeRegions" for n in workflow["nodes"]):
        # the palette editor reads the painting from Load Image before any run (and the node grows to show it)
        page.wait("() => window.app.graph.nodes.filter((n) => n.type === 'GS_StrokeRegions')"
                  ".every((n) => (n.properties.gs_palette || {}).source === 'upload')")
        page.page.wait_for_timeout(300)
    if any(n["type"] == "GS_StrokeCanvas" for n in workflow["nodes"]):
        # the canvas widget shows the painting the workflow names
        page.wait("() => window.app.graph.nodes.filter((n) => n.type === 'GS_StrokeCanvas')"
                  ".every((n) => n.gsStrokeCanvas && n.gsStrokeCanvas.status.textContent.startsWith('loaded'))")
        painted = page.page.evaluate(
            "() => window.app.graph.nodes.filter((n) => n.type === 'GS_StrokeCanvas').map((n) => {"
            " const d = n.gsStrokeCanvas.pixels.data; let c = 0; for (let i = 3; i < d.length; i += 4) c += d[i] > 0;"
            " return c; })")
        assert all(count > 1000 for count in painted), painted
    page.page.evaluate("() => window.app.canvas.setDirty(true, true)")
    page.page.wait_for_timeout(200)  # a frame drawn: nodes have the sizes their widgets ask for
    assert page.page.evaluate(OVERLAPS, []) == [], "nodes overlap (id, left, top, right, bottom)"
    page.screenshot(f"{path.stem}-1-loaded")

    swapped = page.page.evaluate(bs.SWAP_NODES, {"swaps": bs.BROWSER_SWAPS})
    assert any(old == "CheckpointLoaderSimple" for old, _, _ in swapped), swapped
    page.page.evaluate(FEWER_STEPS)
    page.screenshot(f"{path.stem}-2-swapped")

    outputs = [str(n["id"]) for n in workflow["nodes"] if n["type"] in OUTPUT_TYPES and n.get("mode", 0) == 0]
    assert outputs, f"{path.name} has no SaveImage/PreviewImage node"
    result = page.run_graph(outputs)
    page.screenshot(f"{path.stem}-3-done")
    assert "error" not in result, json.dumps(result.get("error"))[:3000]
    # after the run too, with what the nodes now show (previews); the swapped-in test nodes do not count
    assert page.page.evaluate(OVERLAPS, [str(new_id) for _, _, new_id in swapped]) == [], "nodes overlap after the run"
    for output in result["outputs"]:
        assert output["images"], output
        for image in output["images"]:
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=10) as response:
                assert response.status == 200 and response.read(8) == b"\x89PNG\r\n\x1a\n"
    if path.stem == "SDEdit strength sweep":
        assert len(result["outputs"][0]["images"]) == 3  # one per strength of the sweep
    assert page.new_errors(baseline, since) == []


def test_a_template_lists_its_model_files_when_they_are_missing(browser, server, baseline):
    """The pinned frontend's "missing models" dialog (on for users, off for the other browser tests) names the
    model files a template declares in properties.models, so a user without them knows what to fetch and where."""
    if server.frontend != bs.PINNED_FRONTEND:
        pytest.skip(f"frontend {server.frontend} has no missing-models dialog setting")
    path = next(p for p in WORKFLOWS if p.stem == "GradOP+ strokes to photo beside SDEdit")
    workflow = json.loads(path.read_text())
    declared = [m for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])]
    assert declared, f"{path.name} declares no model files"
    bs.store_setting(server, bs.MISSING_MODELS_SETTING, True)
    page = bs.Page(browser, server)
    try:
        page.open()
        page.page.evaluate(OPEN_TEMPLATE, [harness.PACK_NAME, path.stem])
        dialog = page.page.locator(".p-dialog").filter(has_text=declared[0]["name"])
        dialog.wait_for(state="visible")
        text = dialog.inner_text()
        assert all(model["name"] in text for model in declared), text
        assert all(model["directory"] in text for model in declared), text
    finally:
        page.close()
        bs.store_setting(server, bs.MISSING_MODELS_SETTING, False)
