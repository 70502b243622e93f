"""The 360-degree panorama viewer in the real frontend: the panorama_360 example workflow (tiny model swaps, a
128x32 px panorama) is run from the browser; Seamless Decode (circular) then shows the viewer in the node. The
view is checked pixel by pixel against a numpy projection of the preview file the node saved, before and after a
mouse drag (turns the view, not the graph) and a wheel zoom (narrows the field of view, not the graph's zoom).
Screenshots go to test-artifacts/browser/."""
import io
import json
import os
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

import browser_support as bs
from devkit import harness

pytestmark = pytest.mark.server

WIDTH, HEIGHT = 128, 32  # the panorama (the template's 2048x512 shrunk, same 4:1 shape)
DECODE = "() => window.app.graph.nodes.find((n) => n.type === 'GS_SeamlessDecode')"
VIEW = """() => {
  const node = (%s)();
  const viewer = node && node.gsPanoramaViewer;
  if (!viewer || !viewer.source || !viewer.renders) return null;
  const c = viewer.canvas;
  const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return { yaw: viewer.yaw, pitch: viewer.pitch, fov: viewer.fov, renders: viewer.renders,
           width: c.width, height: c.height, pixels: Array.from(pixels), entries: viewer.entries,
           status: viewer.status.textContent,
           graph: { scale: window.app.canvas.ds.scale, offset: Array.from(window.app.canvas.ds.offset) },
           host: c.closest('[data-node-id]') ? 'vue node' : 'dom widget layer' };
}""" % DECODE


def oracle_view(panorama: np.ndarray, width: int, height: int, yaw: float, pitch: float, fov: float) -> np.ndarray:
    """The view from the centre of the sphere, as rotation matrices: ray (x right, y up, z forward) through each
    pixel centre, R = R_yaw(vertical axis) @ R_pitch(x axis); longitude spans the image width (wrapping), latitude
    360 * h / w degrees (at most 180) centred on the horizon; bilinear; outside the image the viewer's grey."""
    sh, sw = panorama.shape[:2]
    span = min(np.pi, 2 * np.pi * sh / sw)
    ty = np.tan(np.radians(fov) / 2)
    tx = ty * width / height
    i, j = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays = np.stack([(2 * i / width - 1) * tx, (1 - 2 * j / height) * ty, np.ones_like(i)], axis=-1)
    r_pitch = np.array([[1, 0, 0], [0, np.cos(pitch), np.sin(pitch)], [0, -np.sin(pitch), np.cos(pitch)]])
    r_yaw = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    d = rays @ (r_yaw @ r_pitch).T
    lon = np.arctan2(d[..., 0], d[..., 2])
    lat = np.arctan2(d[..., 1], np.hypot(d[..., 0], d[..., 2]))
    u = np.mod((lon / (2 * np.pi) + 0.5) * sw - 0.5, sw)
    v = (0.5 - lat / span) * sh - 0.5
    outside = (v < -0.5) | (v > sh - 0.5)
    v = np.clip(v, 0, sh - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    u1, v1 = (u0 + 1) % sw, np.minimum(v0 + 1, sh - 1)
    p = panorama.astype(np.float64)
    top = p[v0, u0] + (p[v0, u1] - p[v0, u0]) * fu
    bottom = p[v1, u0] + (p[v1, u1] - p[v1, u0]) * fu
    out = top + (bottom - top) * fv
    out[outside] = 24
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_panorama(width=2048, height=512) -> np.ndarray:
    """A drawn 360-degree landscape for the README's screenshot (the tiny test model draws noise): sky, a
    mountain ridge of whole sine periods (so it wraps), snow on the peaks, a lake reflecting them, a sun."""
    x = np.arange(width) / width * 2 * np.pi
    y = np.arange(height)[:, None] / height
    ridge = 0.42 - 0.10 * np.sin(3 * x + 1.0) - 0.05 * np.sin(7 * x + 2.0) - 0.025 * np.sin(19 * x + 0.5)
    horizon = 0.62
    image = np.zeros((height, width, 3))
    sky = np.array([70, 120, 200]) + (np.array([190, 215, 240]) - np.array([70, 120, 200])) * (y / horizon)[..., None]
    image[:] = np.broadcast_to(sky, (height, width, 3)) if sky.shape[1] == width else sky
    mountain = (y >= ridge) & (y < horizon)
    depth = np.clip((y - ridge) / 0.2, 0, 1)[..., None]
    rock = np.array([95, 100, 120]) * (1 - 0.4 * depth) + np.array([40, 70, 50]) * 0.4 * depth
    snow = y < ridge + np.clip((0.40 - ridge) * 0.8, 0, 0.06)
    image[mountain] = np.broadcast_to(rock, (height, width, 3))[mountain]
    image[mountain & snow] = [240, 244, 250]
    lake = y >= horizon
    mirrored = np.clip(2 * horizon - y, 0, 1)
    rows = np.clip((mirrored * height).astype(int), 0, height - 1)[:, 0]
    reflection = image[rows] * 0.6 + np.array([20, 50, 90]) * 0.4
    image[np.broadcast_to(lake, (height, width))] = reflection[np.broadcast_to(lake, (height, width))]
    sun = (x[None, :] - 4.0) ** 2 + ((y - 0.2) * 2 * np.pi * height / width) ** 2 < 0.004
    image[sun] = [255, 236, 170]
    return np.clip(image, 0, 255).astype(np.uint8)


def served_image(server, entry: dict) -> np.ndarray:
    """An image the server names ({filename, subfolder, type}), read back through GET /view."""
    query = urllib.parse.urlencode({k: entry.get(k, "") for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=10) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def check_view(view: dict, panorama: np.ndarray) -> np.ndarray:
    shown = np.asarray(view["pixels"], dtype=np.float64).reshape(view["height"], view["width"], 4)
    assert (shown[..., 3] == 255).all()
    expected = oracle_view(panorama, view["width"], view["height"], view["yaw"], view["pitch"], view["fov"])
    off = np.abs(shown[..., :3] - expected).max(axis=-1) > 2  # 8-bit rounding of the bilinear blend
    # (a pixel whose ray grazes the image's top or bottom edge may fall either side in float32 vs float64)
    assert off.mean() < 0.002, f"{off.mean():.4f} of the view differs from the projection"
    return shown[..., :3]


def test_panorama_360_shows_a_viewer_that_turns_and_zooms(page, baseline, server, nodes):
    workflow = json.loads((harness.WORKFLOWS / "SyncDiffusion 360 degree panorama.json").read_text())
    page.page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    swaps = {**bs.BROWSER_SWAPS,
             "EmptyLatentImage": {"type": "EmptyLatentImage", "values": {"width": WIDTH, "height": HEIGHT}}}
    page.page.evaluate(bs.SWAP_NODES, {"swaps": swaps})
    page.page.evaluate("""() => { for (const n of window.app.graph.nodes) for (const w of n.widgets || [])
        if (w.name === 'steps') w.value = Math.min(w.value, 3); }""")
    assert page.page.evaluate("() => !(%s)().gsPanoramaViewer" % DECODE)  # nothing to show before a run
    save_id = str(next(n["id"] for n in workflow["nodes"] if n["type"] == "SaveImage"))
    result = page.run_graph([save_id])
    assert "error" not in result, json.dumps(result.get("error"))[:3000]

    try:
        page.wait("() => { const v = (%s)().gsPanoramaViewer; return !!(v && v.source && v.renders); }" % DECODE)
    except Exception:
        state = page.page.evaluate("""() => { const n = (%s)(); const v = n.gsPanoramaViewer;
          return { id: n.id, viewer: !!v, widgets: (n.widgets || []).map((w) => w.name),
                   status: v && v.status.textContent, renders: v && v.renders, source: !!(v && v.source),
                   executed: window.__gs.executed.map((d) => [d.node, Object.keys(d.output || {})]) }; }""" % DECODE)
        raise AssertionError(f"no viewer on Seamless Decode after the run: {state}")
    bs.show_node(page, "GS_SeamlessDecode", 120, 150)
    page.page.wait_for_timeout(300)
    view = page.page.evaluate(VIEW)
    assert view["host"] == ("vue node" if nodes == "vue" else "dom widget layer")
    [entry] = view["entries"]
    assert entry["type"] == "temp" and (entry["width"], entry["height"]) == (WIDTH, HEIGHT)
    panorama = served_image(server, entry)
    saved = served_image(server, result["outputs"][0]["images"][0])
    assert np.array_equal(panorama, saved)  # the viewer shows the image the workflow saved
    assert (view["yaw"], view["pitch"], view["fov"]) == (0, 0, 75)
    assert view["width"] > 300 and view["height"] > 150, view["width"]
    before = check_view(view, panorama)
    page.screenshot("panorama-1-viewer")

    # Drag right and up: the image follows the pointer, so the view turns left and tilts down.
    box = page.page.locator(".gs-panorama-viewer-canvas").bounding_box()
    mouse = page.page.mouse
    mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    mouse.down()
    mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2 - 20, steps=6)
    mouse.up()
    page.wait("(renders) => { const v = (%s)().gsPanoramaViewer; return v.renders > renders && !v.frame; }" % DECODE,
              view["renders"])
    dragged = page.page.evaluate(VIEW)
    assert dragged["yaw"] < -0.2 and dragged["pitch"] < -0.02, (dragged["yaw"], dragged["pitch"])
    assert dragged["graph"] == view["graph"]  # the graph did not move
    after = check_view(dragged, panorama)
    assert np.abs(after - before).mean() > 5  # the view changed
    page.screenshot("panorama-2-turned")

    # Wheel up: zoom in (narrower field of view), the graph's zoom unchanged.
    mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    mouse.wheel(0, -300)
    page.wait("(renders) => { const v = (%s)().gsPanoramaViewer; return v.renders > renders && !v.frame; }" % DECODE,
              dragged["renders"])
    zoomed = page.page.evaluate(VIEW)
    assert zoomed["fov"] < dragged["fov"] - 5 and zoomed["graph"] == view["graph"], (zoomed["fov"], zoomed["graph"])
    check_view(zoomed, panorama)
    assert "field" in zoomed["status"] and "drag to turn" in zoomed["status"]
    page.screenshot("panorama-3-zoomed")

    # Tilting is limited to the image's latitude span (45 degrees each way for a 4:1 panorama).
    mouse.move(box["x"] + box["width"] / 2, box["y"] + 5)
    mouse.down()
    mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 5, steps=4)
    mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 4, steps=1)
    mouse.up()
    page.page.wait_for_timeout(300)
    tilted = page.page.evaluate(VIEW)
    assert tilted["pitch"] == pytest.approx(np.pi / 4, rel=1e-6), tilted["pitch"]
    check_view(tilted, panorama)
    assert page.new_errors(baseline) == []

    if os.environ.get("GS_DOC_SCREENSHOTS") == "1" and nodes == "classic":  # refresh docs/images/panorama_viewer.png
        (server.input_dir / "gs_doc_panorama.png").write_bytes(png_bytes(synthetic_panorama()))
        page.page.evaluate("""() => { const app = window.app, LG = window.LiteGraph; app.graph.clear();
          const n = LG.createNode('GS_SeamlessDecode'); n.pos = [100, 100]; app.graph.add(n);
          n.widgets.find((w) => w.name === 'circular').value = true;
          n.onExecuted({ gs_panorama_360: [{ filename: 'gs_doc_panorama.png', subfolder: '', type: 'input' }] });
          n.setSize([560, n.size[1] + 80]); }""")
        page.wait("() => { const v = (%s)().gsPanoramaViewer; return !!(v && v.source && v.renders); }" % DECODE)
        bs.show_node(page, "GS_SeamlessDecode", 120, 150)
        page.page.evaluate("() => { const v = (%s)().gsPanoramaViewer; v.yaw = -0.6; v.pitch = 0.12; v.fov = 70;"
                           " v.requestRender(); }" % DECODE)
        page.page.wait_for_timeout(500)
        bs.doc_screenshot(page, "GS_SeamlessDecode", "panorama_viewer")
