"""Every example workflow, loaded and run in the real ComfyUI frontend (headless Chromium).

Each workflow in example_workflows/ is loaded with app.loadGraphData (as opening the file does), checked
for missing node types and for console errors beyond a stock page's, then - in the browser graph - its
CheckpointLoaderSimple / LoadImage / Stroke Canvas nodes are swapped for the tiny test nodes (see
browser_support.BROWSER_SWAPS, the same swaps as harness.TINY_SWAPS; nothing else is changed), queued
with the frontend's own queuePrompt, and its output images must appear on the output nodes.
"""
import json
import urllib.parse
import urllib.request

import pytest

import browser_support as bs
import harness

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
    assert "guided_synthesis.stroke_canvas" in extension_names
    page.screenshot("01-page-with-pack")
    assert page.new_errors(baseline) == []
    assert "IMPORT FAILED" not in "\n".join(l for l in server.log().splitlines() if harness.PACK_NAME in l)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_and_runs_in_the_browser(shared_page, baseline, server, path):
    page = shared_page  # one page for all workflows; each loads its own graph (clean) into it
    since = len(page.errors)
    workflow = json.loads(path.read_text())
    missing = page.page.evaluate(
        "(wf) => [...new Set(wf.nodes.map((n) => n.type))].filter((t) => !(t in window.LiteGraph.registered_node_types))",
        workflow)
    assert missing == [], f"{path.name}: node types missing in the UI: {missing}"

    page.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    loaded = page.page.evaluate("() => window.app.graph.nodes.map((n) => [n.id, n.type])")
    assert sorted(loaded) == sorted([n["id"], n["type"]] for n in workflow["nodes"])
    if any(n["type"] == "GS_StrokeCanvas" for n in workflow["nodes"]):
        # the canvas widget shows the painting the workflow names
        page.wait("() => window.app.graph.nodes.filter((n) => n.type === 'GS_StrokeCanvas')"
                  ".every((n) => n.gsStrokeCanvas && n.gsStrokeCanvas.status.textContent.startsWith('loaded'))")
        painted = page.page.evaluate(
            "() => window.app.graph.nodes.filter((n) => n.type === 'GS_StrokeCanvas').map((n) => {"
            " const d = n.gsStrokeCanvas.pixels.data; let c = 0; for (let i = 3; i < d.length; i += 4) c += d[i] > 0;"
            " return c; })")
        assert all(count > 1000 for count in painted), painted
    page.screenshot(f"{path.stem}-1-loaded")

    swapped = page.page.evaluate(bs.SWAP_NODES, {"swaps": bs.BROWSER_SWAPS})
    assert any(old == "CheckpointLoaderSimple" for old, _, _ in swapped), swapped
    page.screenshot(f"{path.stem}-2-swapped")

    outputs = [str(n["id"]) for n in workflow["nodes"] if n["type"] in OUTPUT_TYPES and n.get("mode", 0) == 0]
    assert outputs, f"{path.name} has no SaveImage/PreviewImage node"
    result = page.run_graph(outputs)
    page.screenshot(f"{path.stem}-3-done")
    assert "error" not in result, json.dumps(result.get("error"))[:3000]
    for output in result["outputs"]:
        assert output["images"], output
        for image in output["images"]:
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=10) as response:
                assert response.status == 200 and response.read(8) == b"\x89PNG\r\n\x1a\n"
    if path.stem == "sdedit_strokes":
        assert len(result["outputs"][0]["images"]) == 3  # one per strength of the sweep
    assert page.new_errors(baseline, since) == []
