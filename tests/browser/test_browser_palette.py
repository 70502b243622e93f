"""The region palette editor on "Stroke Regions to Words" in the real frontend.

A Load Image node feeds the stroke painting: the editor reads the chosen file in the browser and shows
its colour swatches before any run; phrases typed beside the swatches (real key events) write the
region_spec widget; a different painting uploaded through Load Image's own upload code replaces the
swatches, keeps the phrase of the colour both paintings share and flags the lines whose colour is gone;
a run replaces the browser's palette with the node's; the workflow saved, the page reloaded and the
workflow opened again shows the same phrases. User text never becomes markup.
"""
import base64
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import browser_support as bs
from devkit import harness
from guidance import palette as palettes, regions

pytestmark = pytest.mark.server

SIZE = 64
SKY, GRASS, ROOF = "#5a9bd5", "#3c8d2f", "#c0392b"
SAND, WALL = "#f1c40f", "#8e44ad"
FIRST, SECOND = "gs_palette_first.png", "gs_palette_second.png"
PROMPT = "a castle on a hill under a blue sky"

EDITOR = "() => window.app.graph.nodes.find((n) => n.type === 'GS_StrokeRegions')"
STATE = """() => {
  const node = (%s)();
  const editor = node.gsPaletteEditor;
  const root = editor.element;
  return {
    palette: node.properties.gs_palette || null,
    status: editor.status.textContent,
    stale: editor.stale.style.display === 'none' ? '' : editor.staleText.textContent,
    phrases: [...root.querySelectorAll('input[type=text]')].map((i) => i.value),
    swatches: [...root.querySelectorAll('input[type=text]')].map((i) => i.getAttribute('aria-label')),
    spec: node.widgets.find((w) => w.name === 'region_spec').value,
  };
}""" % EDITOR


def hexes(*colours):
    return [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in colours]


def painting(top, bottom_left, bottom_right, split=SIZE // 2):
    """A hard-edged 3-region painting with a soft (anti-aliased) seam between the bottom two regions."""
    a, b, c = hexes(top, bottom_left, bottom_right)
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:split] = a
    image[split:, : SIZE // 2] = b
    image[split:, SIZE // 2:] = c
    image[split:, SIZE // 2 - 1] = (np.array(b) * 0.6 + np.array(c) * 0.4).astype(np.uint8)
    return image


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def state(page):
    return page.page.evaluate(STATE)


def show_editor(page):
    bs.show_node(page, "GS_StrokeRegions", 80, 160)
    page.page.locator(".gs-palette-editor input[type=text]").first.wait_for(state="visible")


def type_phrase(page, swatch, text):
    """Click into the phrase box of a swatch, clear it, and type as a user does (key events)."""
    box = page.page.get_by_label(f"phrase for {swatch}")
    box.click()
    box.press("Control+a")
    box.press("Delete")
    box.press_sequentially(text, delay=5)


def test_palette_editor_reads_uploads_writes_the_spec_and_survives_reload(page, baseline, server, nodes):
    first, second = painting(SKY, GRASS, ROOF), painting(SKY, SAND, WALL, split=SIZE // 3)
    (server.input_dir / FIRST).write_bytes(png_bytes(first))

    ids = page.page.evaluate("""([first, prompt]) => {
      const app = window.app, LG = window.LiteGraph;
      app.graph.clear();
      const add = (type, x, y) => { const n = LG.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
      const checkpoint = add('GS_TestTinyCheckpoint', 20, 40);
      const load = add('LoadImage', 20, 260);
      const regions = add('GS_StrokeRegions', 420, 40);
      const preview = add('PreviewImage', 900, 40);
      regions.widgets.find((w) => w.name === 'prompt').value = prompt;
      regions.setSize([440, 520]);
      checkpoint.connect(0, regions, regions.findInputSlot('model'));
      checkpoint.connect(1, regions, regions.findInputSlot('clip'));
      const image = load.widgets.find((w) => w.name === 'image');
      image.value = first;
      image.callback && image.callback(first);
      load.connect(0, regions, regions.findInputSlot('stroke'));
      regions.connect(2, preview, 0);
      return { load: load.id, regions: String(regions.id), preview: String(preview.id) };
    }""", [FIRST, PROMPT])

    # Before any run: the swatches come from the Load Image file, read in the browser.
    page.wait("() => ((%s)().properties.gs_palette || {}).source === 'upload'" % EDITOR)
    before = state(page)
    assert before["palette"]["colours"] == [SKY, GRASS, ROOF], before
    assert before["swatches"] == [f"phrase for {c}" for c in (SKY, GRASS, ROOF)]
    assert before["status"].startswith("3 colour regions from the loaded image"), before["status"]
    # The browser's extraction agrees with the node's (guidance.palette.extract_palette) on the same file.
    node_palette = palettes.extract_palette(torch.from_numpy(first).float() / 255)
    assert [palettes.rgb_to_hex(c) for c in node_palette.colours] == before["palette"]["colours"]
    np.testing.assert_allclose(before["palette"]["areas"], node_palette.areas, atol=0.02)  # abs: fractions in [0, 1]

    show_editor(page)
    type_phrase(page, SKY, "blue sky")
    type_phrase(page, ROOF, "castle")
    typed = state(page)
    assert typed["spec"] == f"{SKY}: blue sky\n{ROOF}: castle", typed["spec"]
    # Markup typed as a phrase stays text: no element is created, no handler runs.
    type_phrase(page, GRASS, '<img src=x onerror="window.__gsInjected=1">hill')
    page.page.wait_for_timeout(300)
    assert page.page.evaluate("() => window.__gsInjected === undefined")
    assert page.page.locator(".gs-palette-editor img").count() == 0
    type_phrase(page, GRASS, "hill")
    assert state(page)["spec"] == f"{SKY}: blue sky\n{GRASS}: hill\n{ROOF}: castle"
    page.screenshot("palette-1-typed")

    # A second painting uploaded through Load Image's own upload path (the file picker's and paste's
    # handler: POST /upload/image, then the image widget's value and callback).
    payload = base64.b64encode(png_bytes(second)).decode()
    page.page.evaluate("""async ([id, name, payload]) => {
      const load = window.app.graph.getNodeById(id);
      const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
      load.pasteFiles([new File([bytes], name, { type: 'image/png', lastModified: Date.now() - 60000 })]);
    }""", [ids["load"], SECOND, payload])
    page.wait("(name) => (%s)().properties.gs_palette.colours.includes('%s')" % (EDITOR, SAND), SECOND)
    assert (server.input_dir / SECOND).exists()
    uploaded = state(page)
    assert uploaded["palette"]["colours"] == [SKY, SAND, WALL]
    assert uploaded["phrases"] == ["blue sky", "", ""]  # the colour both paintings share keeps its phrase
    assert GRASS in uploaded["stale"] and ROOF in uploaded["stale"], uploaded["stale"]
    page.screenshot("palette-2-second-painting")
    page.page.locator(".gs-palette-editor .gs-palette-drop").click()
    assert state(page)["spec"] == f"{SKY}: blue sky" and state(page)["stale"] == ""
    type_phrase(page, SAND, "sand")
    type_phrase(page, WALL, "castle")
    spec = state(page)["spec"]
    assert spec == f"{SKY}: blue sky\n{SAND}: sand\n{WALL}: castle", spec

    # A run: the node's palette (and its phrase resolution) replaces the browser's.
    result = page.run_graph([ids["preview"]])
    assert "error" not in result, json.dumps(result.get("error"))[:3000]
    page.wait("() => (%s)().properties.gs_palette.source === 'run'" % EDITOR)
    ran = state(page)
    assert ran["palette"]["colours"] == [SKY, SAND, WALL]
    assert ran["phrases"] == ["blue sky", "sand", "castle"]
    assert ran["status"].startswith("3 colour regions from the last run"), ran["status"]
    history = bs.http_json(f"{server.url}/history/{result['prompt_id']}")[result["prompt_id"]]
    sent = next(n["inputs"] for n in history["prompt"][2].values() if n["class_type"] == "GS_StrokeRegions")
    assert sent["region_spec"] == spec
    page.screenshot("palette-3-after-run")
    if os.environ.get("GS_DOC_SCREENSHOTS") == "1":  # refresh docs/images/palette_editor.png
        show_editor(page)
        page.page.wait_for_timeout(500)
        bs.doc_screenshot(page, "GS_StrokeRegions", "palette_editor")

    # Save as the frontend does, reload the page, open the workflow again.
    # through JSON, as saving to a file does (Playwright would turn undefined fields into nulls)
    saved = page.page.evaluate("() => JSON.parse(JSON.stringify(window.app.graph.serialize()))")
    regions_node = next(n for n in saved["nodes"] if n["type"] == "GS_StrokeRegions")
    assert spec in regions_node["widgets_values"]
    page.reload()
    page.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", saved)
    page.wait("() => { const n = (%s)(); return n && n.gsPaletteEditor"
              " && n.gsPaletteEditor.element.querySelectorAll('input[type=text]').length === 3; }" % EDITOR)
    reloaded = state(page)
    assert reloaded["spec"] == spec
    assert reloaded["phrases"] == ["blue sky", "sand", "castle"]
    assert reloaded["palette"]["source"] == "run"
    show_editor(page)
    page.screenshot("palette-4-reloaded")
    assert page.new_errors(baseline) == []


def test_palette_helpers_in_the_page_match_the_node(page, baseline, server):
    """The editor's own spec logic, loaded as the frontend loads it, resolves lines as the node does."""
    module = f"/extensions/{harness.PACK_NAME}/widgets/palette_editor.js"
    palette = {"colours": [SKY, GRASS, ROOF], "tolerance": 24}
    spec = "// a comment\n#5a9bd6: sky\nred: castle\nhill\n#123456: gone"
    result = page.page.evaluate("""async ([module, palette, spec]) => {
      const m = await import(module);
      return { phrases: m.phrasesFor(palette, spec), stale: m.unmatchedLines(palette, spec).map((l) => l.raw),
               dropped: m.dropUnmatched(palette, spec),
               rebuilt: m.buildSpec(palette, ['sky', 'meadow', 'castle'], spec) };
    }""", [module, palette, spec])
    lines = regions.parse_region_spec("\n".join(l for l in spec.splitlines() if "#123456" not in l))
    assert result["phrases"] == regions.resolve_regions(lines, hexes(SKY, GRASS, ROOF))
    assert result["stale"] == ["#123456: gone"]
    assert result["dropped"] == "// a comment\n#5a9bd6: sky\nred: castle\nhill"
    assert result["rebuilt"] == f"{SKY}: sky\n{GRASS}: meadow\n{ROOF}: castle\n// a comment\n#123456: gone"
    with pytest.raises(ValueError, match="#123456 is not in the stroke image"):
        regions.resolve_regions(regions.parse_region_spec(spec), hexes(SKY, GRASS, ROOF))
    assert page.new_errors(baseline) == []


def test_palette_editor_follows_the_stroke_canvas_as_the_user_paints(page, baseline, server, nodes):
    """Stroke Canvas -> Stroke Regions: the swatches follow the painting before any run."""
    red, blue = "#e03c31", "#1e5bd8"
    page.page.evaluate("""() => {
      const app = window.app, LG = window.LiteGraph;
      app.graph.clear();
      const add = (type, x, y) => { const n = LG.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
      const canvas = add('GS_StrokeCanvas', 20, 40);
      for (const [name, value] of [['width', 64], ['height', 64]]) {
        const w = canvas.widgets.find((w) => w.name === name); w.value = value; w.callback(value);
      }
      const regions = add('GS_StrokeRegions', 520, 40);
      regions.setSize([440, 520]);
      canvas.connect(0, regions, regions.findInputSlot('stroke'));
    }""")
    page.wait("() => ((%s)().properties.gs_palette || {}).source === 'canvas'" % EDITOR)
    assert state(page)["palette"]["colours"] == ["#ffffff"]  # the empty canvas: its background colour

    box = bs.show_stroke_canvas(page)
    mouse = page.page.mouse

    def stroke(colour, points):
        page.page.locator(f".gs-stroke-canvas button[data-color='{colour}']").click()
        mouse.move(box["x"] + points[0][0] * box["width"] / SIZE, box["y"] + points[0][1] * box["height"] / SIZE)
        mouse.down()
        for x, y in points[1:]:
            mouse.move(box["x"] + x * box["width"] / SIZE, box["y"] + y * box["height"] / SIZE, steps=6)
        mouse.up()

    page.page.locator(".gs-stroke-canvas input[type=range]").fill("12")
    stroke(red, [(4, 16), (60, 16)])
    page.wait("() => (%s)().properties.gs_palette.colours.length === 2" % EDITOR)
    assert state(page)["palette"]["colours"] == ["#ffffff", red]
    show_editor(page)
    type_phrase(page, red, "river")
    type_phrase(page, "#ffffff", "snow")

    # Another colour painted later: a third swatch appears, the phrases stay with their colours.
    box = bs.show_stroke_canvas(page)  # laid out again after the view moved (None until then)
    stroke(blue, [(4, 48), (60, 48)])
    page.wait("() => (%s)().properties.gs_palette.colours.length === 3" % EDITOR)
    after = state(page)
    assert after["palette"]["colours"] == ["#ffffff", red, blue]
    assert after["phrases"] == ["snow", "river", ""]
    assert after["spec"] == f"#ffffff: snow\n{red}: river"
    show_editor(page)
    page.screenshot("palette-5-from-stroke-canvas")
    assert page.new_errors(baseline) == []


def test_a_missing_painting_is_reported_once(page, baseline, server, nodes):
    """A workflow whose Load Image names a file that is not in the input folder (a template opened before its
    painting is there): the editor's failed read is reported once, not retried on every connection change or
    redraw; choosing another file reads that one, and a file that is there gives the swatches."""
    workflow = json.loads((harness.WORKFLOWS / "Region words on a painting.json").read_text())
    load = next(n for n in workflow["nodes"] if n["type"] == "LoadImage")
    load["widgets_values"][0] = "gs_missing_painting.png"
    assert not (server.input_dir / "gs_missing_painting.png").exists()

    def reports():
        return [w for w in page.warnings if "palette editor" in w]

    page.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait("() => ((%s)() || {}).gsPaletteEditor !== undefined" % EDITOR)
    page.page.wait_for_timeout(3000)
    assert len(reports()) == 1 and "gs_missing_painting.png" in reports()[0], reports()
    assert state(page)["palette"] is None

    def choose(name):
        page.page.evaluate("""([id, name]) => {
          const w = window.app.graph.getNodeById(id).widgets.find((w) => w.name === 'image');
          w.value = name;
          w.callback && w.callback(name);
        }""", [load["id"], name])

    choose("gs_missing_painting.png")  # the same name again: still reported once
    page.page.wait_for_timeout(1000)
    assert len(reports()) == 1, reports()
    choose("gs_another_missing_painting.png")  # another name: read (and reported) once
    page.page.wait_for_timeout(2000)
    assert len(reports()) == 2 and "gs_another_missing_painting.png" in reports()[1], reports()
    (server.input_dir / FIRST).write_bytes(png_bytes(painting(SKY, GRASS, ROOF)))
    choose(FIRST)
    page.wait("() => ((%s)().properties.gs_palette || {}).source === 'upload'" % EDITOR)
    assert state(page)["palette"]["colours"] == [SKY, GRASS, ROOF]
    assert len(reports()) == 2
    # the only new errors are the missing files' 404s (Load Image's preview and the editor's read)
    assert all("missing_painting.png" in e for e in page.new_errors(baseline)), page.new_errors(baseline)
