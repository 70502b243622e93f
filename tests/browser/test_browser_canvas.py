"""The Stroke Canvas widget in the real frontend: paint with the mouse, undo/redo, fill, erase, queue an
SDEdit workflow from the painting, save the workflow, reload the page, load it back: the painting is
still there. Screenshots of each step go to test-artifacts/browser/."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import browser_support as bs
from devkit import harness

pytestmark = pytest.mark.server

SIZE = 64  # canvas pixels: the tiny models sample 64 px quickly
RED, BLUE, YELLOW = "#e03c31", "#1e5bd8", "#f5d327"
REFERENCE = re.compile(r"^guided_synthesis/stroke_canvas_[0-9a-f]{16}\.png \[input\]$")

CANVAS = "() => window.app.graph.nodes.find((n) => n.type === 'GS_StrokeCanvas')"
# Colour counts of the widget's painting layer, and of the pixels shown on its visible canvas.
COUNT = """(colors) => {
  const node = (%s)();
  const canvas = node.gsStrokeCanvas;
  const hex = (d, i) => '#' + [d[i], d[i + 1], d[i + 2]].map((v) => v.toString(16).padStart(2, '0')).join('');
  const count = (d, alphaMatters) => {
    const out = { painted: 0 };
    for (const c of colors) out[c] = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (alphaMatters && d[i + 3] === 0) continue;
      out.painted += 1;
      const h = hex(d, i);
      if (h in out) out[h] += 1;
    }
    return out;
  };
  const shown = canvas.canvas.getContext('2d').getImageData(0, 0, canvas.canvas.width, canvas.canvas.height).data;
  return { layer: count(canvas.pixels.data, true), shown: count(shown, false),
           width: canvas.pixels.width, height: canvas.pixels.height,
           reference: node.widgets.find((w) => w.name === 'painting').value,
           status: canvas.status.textContent };
}""" % CANVAS


def widget_host(page):
    """Where the painting surface is mounted: inside a Vue node (Nodes 2.0) or the classic DOM widget layer."""
    return page.page.evaluate("() => document.querySelector('.gs-stroke-canvas-surface').closest('[data-node-id]')"
                              " ? 'vue node' : 'dom widget layer'")


def counts(page):
    return page.page.evaluate(COUNT, [RED, BLUE, YELLOW, "#ffffff"])


def set_widget(page, name, value):
    """Change a widget as the UI does (value, then its callback)."""
    page.page.evaluate("""([name, value]) => {
      const node = (%s)();
      const w = node.widgets.find((w) => w.name === name);
      w.value = value;
      w.callback && w.callback(value);
    }""" % CANVAS, [name, value])


def show_canvas_node(page):
    """Put the canvas node at the top left of the view at 100 %%, and return its drawing surface's box."""
    return bs.show_stroke_canvas(page)


def drag(page, box, points, size=SIZE):
    """A mouse stroke through points given in canvas pixels."""
    scale_x, scale_y = box["width"] / size, box["height"] / size
    to_screen = [(box["x"] + x * scale_x, box["y"] + y * scale_y) for x, y in points]
    mouse = page.page.mouse
    mouse.move(*to_screen[0])
    mouse.down()
    for point in to_screen[1:]:
        mouse.move(*point, steps=6)
    mouse.up()


def click_at(page, box, x, y):
    page.page.mouse.click(box["x"] + x * box["width"] / SIZE, box["y"] + y * box["height"] / SIZE)


def button(page, selector):
    page.page.locator(f".gs-stroke-canvas {selector}").click()


def wait_saved(page):
    """Until the last edit is uploaded and the painting widget names it."""
    page.wait(
        "() => { const c = (%s)().gsStrokeCanvas; return !c.dirty && !c.uploadTimer && c.pending === 0"
        " && c.status.textContent.startsWith('saved'); }" % CANVAS)
    return counts(page)


def test_paint_queue_save_reload(page, baseline, server, nodes):
    workflow = json.loads((harness.WORKFLOWS / "Stroke Canvas into SDEdit.json").read_text())
    page.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait("() => (%s)().gsStrokeCanvas.status.textContent.startsWith('loaded')" % CANVAS)

    if os.environ.get("GS_DOC_SCREENSHOTS") == "1":  # refresh docs/images/stroke_canvas.png
        box = show_canvas_node(page)
        page.page.locator(".gs-stroke-canvas input[type=range]").fill("28")
        button(page, "button[data-color='#ffffff']")
        drag(page, box, [(60, 150), (110, 135), (160, 150), (200, 140)], size=512)
        drag(page, box, [(250, 90), (300, 80), (340, 92)], size=512)
        button(page, "button[data-color='#8e44ad']")
        page.page.locator(".gs-stroke-canvas input[type=range]").fill("12")
        drag(page, box, [(330, 420), (345, 400), (360, 420), (375, 400), (390, 420)], size=512)
        wait_saved(page)
        bs.doc_screenshot(page, "GS_StrokeCanvas", "stroke_canvas")

    # A new 64 x 64 painting: resize (rescales the example painting), then Clear.
    set_widget(page, "width", SIZE)
    set_widget(page, "height", SIZE)
    button(page, "button[data-action=clear]")
    state = counts(page)
    assert (state["width"], state["height"]) == (SIZE, SIZE) and state["layer"]["painted"] == 0
    assert state["shown"]["#ffffff"] == SIZE * SIZE  # the white background colour shows through
    box = show_canvas_node(page)
    # Nodes 2.0 moves the widget's element into the node's own DOM (a Vue component); classic nodes keep it
    # in the layer of DOM widgets over the graph canvas.
    assert widget_host(page) == ("vue node" if nodes == "vue" else "dom widget layer")
    page.screenshot("canvas-1-empty")

    # Two strokes that cross the whole canvas: red horizontal, blue vertical (quarters the canvas).
    page.page.locator(".gs-stroke-canvas input[type=range]").fill("6")
    button(page, f"button[data-color='{RED}']")
    drag(page, box, [(0.3, 30), (20, 31), (44, 30), (63.7, 31)])
    button(page, f"button[data-color='{BLUE}']")
    drag(page, box, [(34, 0.3), (33, 30), (34, 63.7)])
    painted = counts(page)["layer"]
    assert painted[RED] > SIZE * 3 and painted[BLUE] > SIZE * 3, painted
    assert painted[RED] + painted[BLUE] == painted["painted"]  # hard edges: only the two colours
    shown = counts(page)["shown"]
    assert shown[RED] == painted[RED] and shown[BLUE] == painted[BLUE]
    page.screenshot("canvas-2-strokes")

    button(page, "button[data-action=undo]")
    undone = counts(page)["layer"]
    assert undone[BLUE] == 0 and undone[RED] > painted[RED]  # the blue stroke had covered some red
    button(page, "button[data-action=redo]")
    redone = counts(page)
    assert redone["layer"] == painted and redone["shown"][BLUE] == painted[BLUE]

    # Bucket fill of the top-left quarter only (the strokes wall it off).
    button(page, f"button[data-color='{YELLOW}']")
    button(page, "button[data-tool=fill]")
    click_at(page, box, 5, 5)
    state = counts(page)
    filled = state["layer"]
    assert 200 < filled[YELLOW] < SIZE * SIZE / 4, filled
    assert state["shown"][YELLOW] == filled[YELLOW]  # and it is on screen
    assert filled["painted"] == painted["painted"] + filled[YELLOW]

    # Eraser across the bottom-right quarter's part of the red stroke.
    button(page, "button[data-tool=eraser]")
    drag(page, box, [(48, 30), (62, 30)])
    state = counts(page)
    erased = state["layer"]
    assert erased[RED] < filled[RED] and erased[YELLOW] == filled[YELLOW]
    assert state["shown"][RED] == erased[RED] and state["shown"]["#ffffff"] == SIZE * SIZE - erased["painted"]
    page.screenshot("canvas-3-filled-and-erased")

    # The painting is uploaded to the input folder; the widget holds only its name.
    saved = wait_saved(page)
    assert REFERENCE.match(saved["reference"]), saved["reference"]
    file = server.input_dir / saved["reference"].removesuffix(" [input]")
    rgba = np.asarray(Image.open(file).convert("RGBA"))
    assert rgba.shape == (SIZE, SIZE, 4)
    assert int((rgba[..., 3] > 0).sum()) == saved["layer"]["painted"]
    assert int(((rgba[..., 3] == 255) & np.all(rgba[..., :3] == (0xf5, 0xd3, 0x27), axis=-1)).sum()) == filled[YELLOW]

    # Queue SDEdit from the canvas (the real canvas node; only the checkpoint is swapped for the tiny one).
    swaps = {"CheckpointLoaderSimple": bs.BROWSER_SWAPS["CheckpointLoaderSimple"]}
    page.page.evaluate(bs.SWAP_NODES, {"swaps": swaps})
    page.page.evaluate("""() => { for (const n of window.app.graph.nodes)
        for (const w of n.widgets || []) if (w.name === 'steps') w.value = 4; }""")
    save_id = str(next(n["id"] for n in workflow["nodes"] if n["type"] == "SaveImage"))
    result = page.run_graph([save_id])
    assert "error" not in result, json.dumps(result.get("error"))[:3000]
    assert len(result["outputs"][0]["images"]) == 1
    history = bs.http_json(f"{server.url}/history/{result['prompt_id']}")[result["prompt_id"]]
    canvas_inputs = next(n["inputs"] for n in history["prompt"][2].values() if n["class_type"] == "GS_StrokeCanvas")
    assert canvas_inputs["painting"] == saved["reference"]
    assert canvas_inputs["width"] == SIZE and canvas_inputs["height"] == SIZE
    page.screenshot("canvas-4-queued-and-done")

    # Save the workflow as the frontend does, reload the page, open it again.
    # through JSON, as saving to a file does (Playwright would turn undefined fields into nulls)
    saved_workflow = page.page.evaluate("() => JSON.parse(JSON.stringify(window.app.graph.serialize()))")
    text = json.dumps(saved_workflow)
    canvas_node = next(n for n in saved_workflow["nodes"] if n["type"] == "GS_StrokeCanvas")
    assert canvas_node["widgets_values"][:3] == [saved["reference"], SIZE, SIZE]
    assert "data:image" not in text and len(text) < 30_000  # a reference, not the pixels
    page.artifacts.mkdir(parents=True, exist_ok=True)
    (page.artifacts / "canvas-saved-workflow.json").write_text(json.dumps(saved_workflow, indent=1))

    page.reload()
    page.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", saved_workflow)
    page.wait("() => (%s)().gsStrokeCanvas.status.textContent.startsWith('loaded')" % CANVAS)
    show_canvas_node(page)
    reloaded = counts(page)
    assert reloaded["reference"] == saved["reference"]
    assert reloaded["layer"] == saved["layer"]
    assert reloaded["shown"][YELLOW] == filled[YELLOW] and reloaded["shown"][RED] == erased[RED]
    page.screenshot("canvas-5-reloaded")

    if server.frontend in bs.VUE_NODES_FRONTENDS:
        # The user switches Nodes 2.0 off (or on) with the workflow open: the same widget moves to the other
        # host, still shows the painting, and still paints.
        other = "classic" if nodes == "vue" else "vue"
        page.page.evaluate("async ([id, on]) => { await window.app.extensionManager.setting.set(id, on); }",
                           [bs.VUE_NODES_SETTING, other == "vue"])
        page.page.wait_for_timeout(500)
        box = show_canvas_node(page)
        assert widget_host(page) == ("vue node" if other == "vue" else "dom widget layer")
        assert counts(page)["shown"][YELLOW] == filled[YELLOW]
        button(page, f"button[data-color='{BLUE}']")
        button(page, "button[data-tool=fill]")
        click_at(page, box, 60, 5)  # fill the unpainted right half (the eraser opened the red wall)
        switched = counts(page)
        assert switched["shown"][BLUE] > reloaded["shown"][BLUE] + 200, switched
        wait_saved(page)
        page.screenshot(f"canvas-6-switched-to-{'nodes-2.0' if other == 'vue' else 'classic-nodes'}")
        bs.set_node_mode(server, "classic")
    assert page.new_errors(baseline) == []


def test_the_image_input_is_shown_under_the_strokes_after_a_run(page, baseline, server, nodes):
    """Stroke-based editing: LoadImage -> Stroke Canvas 'image'; after one run the widget shows it."""
    # the example painting the pack copied into input/ when it loaded
    assert (server.input_dir / "guided_synthesis_strokes.png").is_file()
    ids = page.page.evaluate("""() => {
      const app = window.app, LG = window.LiteGraph;
      app.graph.clear();
      const load = LG.createNode('LoadImage'); load.pos = [20, 40]; app.graph.add(load);
      load.widgets.find((w) => w.name === 'image').value = 'guided_synthesis_strokes.png';
      const canvas = LG.createNode('GS_StrokeCanvas'); canvas.pos = [360, 40]; app.graph.add(canvas);
      for (const [name, value] of [['width', 64], ['height', 64]]) {
        const w = canvas.widgets.find((w) => w.name === name); w.value = value; w.callback(value);
      }
      const preview = LG.createNode('PreviewImage'); preview.pos = [820, 40]; app.graph.add(preview);
      load.connect(0, canvas, canvas.findInputSlot('image'));
      canvas.connect(0, preview, 0);
      return [String(canvas.id), String(preview.id)];
    }""")
    before = counts(page)
    assert before["shown"]["#ffffff"] == SIZE * SIZE
    result = page.run_graph([ids[1]])
    assert "error" not in result, result
    page.wait("() => !!(%s)().gsStrokeCanvas.background" % CANVAS)
    shown = counts(page)["shown"]
    # The example stroke painting (sky blue, sun, mountains, lake, meadow) replaces the white background.
    assert shown["#ffffff"] < SIZE * SIZE / 10, shown
    show_canvas_node(page)
    page.screenshot("canvas-7-background-from-image-input")
    assert page.new_errors(baseline) == []
