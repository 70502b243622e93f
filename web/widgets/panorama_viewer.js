// 360-degree panorama viewer for GS_SeamlessDecode (circular) and GS_SyncDiffusion (loop).
//
// After a run the node's UI output "gs_panorama_360" names preview files in ComfyUI's temp folder
// (nodes/panorama/panorama_view.py). The viewer shows the first one as seen from the centre of a sphere: the image's
// width spans 360 degrees of longitude, its height 360 * height / width degrees of latitude around the
// horizon (capped at 180; a 2:1 image is a full equirectangular sphere). Drag to turn, wheel to zoom,
// double-click to reset. With Nodes 2.0 the wheel zooms the view once the viewer has been clicked (focused);
// before that it zooms the graph, as over any other part of a node. Rendering is a plain 2D canvas, one ray per pixel, in the page (no WebGL, no
// library, nothing downloaded), redrawn only when the view changes.
import { app } from "../../../scripts/app.js";
import { chain, el } from "../lib/dom.js";
import { loadImage, viewUrl } from "../lib/upload.js";

export const UI_KEY = "gs_panorama_360";
export const NODE_TYPES = ["GS_SeamlessDecode", "GS_SyncDiffusion"];
const DEFAULT_FOV = 75; // vertical field of view, degrees
const MIN_FOV = 20;
const MAX_FOV = 120;
const MAX_PIXELS = 640 * 400; // render resolution cap (the canvas is stretched to the node's width)
const VIEWER_MIN_HEIGHT = 220;
const BACKGROUND = [24, 24, 24];

const BUTTON_STYLE = {
  padding: "1px 6px", fontSize: "11px", cursor: "pointer", borderRadius: "4px",
  border: "1px solid var(--border-color, #555)", background: "var(--comfy-input-bg, #222)",
  color: "var(--input-text, #ddd)",
};

// ---------------------------------------------------------------------------------------------
// Projection (pure; exported for tests)

/** Latitude span (radians) an image of width x height covers when its width spans 360 degrees. */
export function latitudeSpan(width, height) {
  return Math.min(Math.PI, (2 * Math.PI * height) / width);
}

/** The pitch limit (radians): the view's centre stays on the image. */
export function pitchLimit(width, height) {
  return latitudeSpan(width, height) / 2;
}

/**
 * Render the view into `out` (ImageData of the output size) from `source` (ImageData of the panorama).
 * yaw / pitch in radians (yaw 0 looks at the image's centre column), fov = vertical field of view in degrees.
 */
export function renderView(source, out, yaw, pitch, fov) {
  const { width: sw, height: sh, data: src } = source;
  const { width: w, height: h, data: dst } = out;
  const span = latitudeSpan(sw, sh);
  const ty = Math.tan((fov * Math.PI) / 360);
  const tx = (ty * w) / h;
  const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
  const twoPi = 2 * Math.PI;
  for (let j = 0; j < h; j++) {
    const ny = (1 - (2 * (j + 0.5)) / h) * ty;
    for (let i = 0; i < w; i++) {
      const nx = ((2 * (i + 0.5)) / w - 1) * tx;
      // camera ray (nx, ny, 1): pitch about the x axis, then yaw about the vertical axis
      const y1 = ny * cp + sp, z1 = -ny * sp + cp;
      const x2 = nx * cy + z1 * sy, z2 = -nx * sy + z1 * cy;
      const lon = Math.atan2(x2, z2);
      const lat = Math.atan2(y1, Math.hypot(x2, z2));
      const o = (j * w + i) * 4;
      const v = (0.5 - lat / span) * sh - 0.5;
      if (v < -0.5 || v > sh - 0.5) {
        dst[o] = BACKGROUND[0]; dst[o + 1] = BACKGROUND[1]; dst[o + 2] = BACKGROUND[2]; dst[o + 3] = 255;
        continue;
      }
      let u = (lon / twoPi + 0.5) * sw - 0.5;
      u = ((u % sw) + sw) % sw; // wraps: the left and right edges are neighbours
      const u0 = Math.floor(u), fu = u - u0, u1 = (u0 + 1) % sw;
      const vc = Math.min(sh - 1, Math.max(0, v));
      const v0 = Math.floor(vc), fv = vc - v0, v1 = Math.min(sh - 1, v0 + 1);
      const a = (v0 * sw + u0) * 4, b = (v0 * sw + u1) * 4, c = (v1 * sw + u0) * 4, d = (v1 * sw + u1) * 4;
      for (let k = 0; k < 3; k++) {
        const top = src[a + k] + (src[b + k] - src[a + k]) * fu;
        const bottom = src[c + k] + (src[d + k] - src[c + k]) * fu;
        dst[o + k] = top + (bottom - top) * fv;
      }
      dst[o + 3] = 255;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The widget

class PanoramaViewer {
  constructor(node) {
    this.node = node;
    this.entries = [];
    this.index = 0;
    this.source = null; // ImageData of the shown panorama
    this.yaw = 0;
    this.pitch = 0;
    this.fov = DEFAULT_FOV;
    this.frame = 0; // pending animation frame
    this.renders = 0;
    this.loadToken = 0;
    // tabindex + data-capture-wheel: in Nodes 2.0 the graph takes every wheel event unless it happens over a
    // focused element marked so (the frontend's own 3D viewers do the same); the viewer takes focus when pressed.
    this.canvas = el("canvas", {
      class: "gs-panorama-viewer-canvas", width: 2, height: 2, tabindex: "-1", "data-capture-wheel": "true",
      style: { width: "100%", height: "100%", display: "block", cursor: "grab", touchAction: "none",
               borderRadius: "4px", background: "#181818", outline: "none" },
    });
    this.status = el("span", { class: "gs-panorama-viewer-status",
      style: { flex: "1", minWidth: "0", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" } });
    this.previous = el("button", { type: "button", title: "Previous panorama of the batch", style: BUTTON_STYLE,
                                   dataset: { action: "previous" }, on: { click: () => this.show(this.index - 1) } }, "◀");
    this.next = el("button", { type: "button", title: "Next panorama of the batch", style: BUTTON_STYLE,
                               dataset: { action: "next" }, on: { click: () => this.show(this.index + 1) } }, "▶");
    const reset = el("button", { type: "button", title: "Look at the image's centre, default zoom", style: BUTTON_STYLE,
                                 dataset: { action: "reset" }, on: { click: () => this.resetView() } }, "Reset");
    this.frameEl = el("div", { style: { flex: "1 1 auto", minHeight: "0", position: "relative" } }, [this.canvas]);
    this.element = el("div", {
      class: "gs-panorama-viewer",
      style: { display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
               boxSizing: "border-box", color: "var(--input-text, #ddd)", fontSize: "11px" },
    }, [
      this.frameEl,
      el("div", { style: { display: "flex", gap: "4px", alignItems: "center" } },
         [this.status, this.previous, this.next, reset]),
    ]);
    this.bindPointer();
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.frameEl);
  }

  // ----- view
  resize() {
    const { clientWidth, clientHeight } = this.frameEl;
    if (!clientWidth || !clientHeight) return;
    const dpr = window.devicePixelRatio || 1;
    let w = Math.round(clientWidth * dpr), h = Math.round(clientHeight * dpr);
    const scale = Math.min(1, Math.sqrt(MAX_PIXELS / (w * h)));
    w = Math.max(2, Math.round(w * scale));
    h = Math.max(2, Math.round(h * scale));
    if (w !== this.canvas.width || h !== this.canvas.height) {
      this.canvas.width = w;
      this.canvas.height = h;
      this.output = null;
      this.requestRender();
    }
  }

  clampView() {
    this.fov = Math.min(MAX_FOV, Math.max(MIN_FOV, this.fov));
    const limit = this.source ? pitchLimit(this.source.width, this.source.height) : 0;
    this.pitch = Math.min(limit, Math.max(-limit, this.pitch));
    this.yaw = Math.atan2(Math.sin(this.yaw), Math.cos(this.yaw));
  }

  resetView() {
    this.yaw = 0;
    this.pitch = 0;
    this.fov = DEFAULT_FOV;
    this.requestRender();
  }

  requestRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  render() {
    const ctx = this.canvas.getContext("2d");
    if (!this.source) {
      ctx.fillStyle = "#181818";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      return;
    }
    this.clampView();
    if (!this.output || this.output.width !== this.canvas.width || this.output.height !== this.canvas.height) {
      this.output = ctx.createImageData(this.canvas.width, this.canvas.height);
    }
    renderView(this.source, this.output, this.yaw, this.pitch, this.fov);
    ctx.putImageData(this.output, 0, 0);
    this.renders++;
    this.updateStatus();
  }

  updateStatus() {
    const entry = this.entries[this.index];
    if (!entry) return;
    const degrees = (r) => Math.round((r * 180) / Math.PI);
    const batch = this.entries.length > 1 ? `${this.index + 1}/${this.entries.length} · ` : "";
    const rough = entry.approximate ? " · rough colours of the latent (decode with Seamless Decode)" : "";
    this.setStatus(`${batch}360° · turn ${degrees(this.yaw)}° · tilt ${degrees(this.pitch)}° · ` +
                   `field ${Math.round(this.fov)}° · drag to turn, wheel to zoom${rough}`);
  }

  setStatus(text) {
    this.status.textContent = text;
    this.status.title = text;
  }

  bindPointer() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      event.stopPropagation();
      c.focus({ preventScroll: true });
      c.setPointerCapture?.(event.pointerId);
      this.drag = { x: event.clientX, y: event.clientY };
      c.style.cursor = "grabbing";
    });
    c.addEventListener("pointermove", (event) => {
      if (!this.drag) return;
      event.preventDefault();
      event.stopPropagation();
      // the image follows the pointer: one CSS pixel turns by the angle one pixel spans at the centre
      const rect = c.getBoundingClientRect();
      const perPixel = (2 * Math.tan((this.fov * Math.PI) / 360)) / Math.max(1, rect.height);
      this.yaw -= Math.atan((event.clientX - this.drag.x) * perPixel);
      this.pitch += Math.atan((event.clientY - this.drag.y) * perPixel);
      this.drag = { x: event.clientX, y: event.clientY };
      this.requestRender();
    });
    const end = (event) => {
      if (!this.drag) return;
      event.stopPropagation();
      this.drag = null;
      c.style.cursor = "grab";
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    // Zoom the view, not the graph.
    c.addEventListener("wheel", (event) => {
      event.preventDefault();
      event.stopPropagation();
      this.fov *= Math.exp(event.deltaY * 0.001);
      this.requestRender();
    }, { passive: false });
    c.addEventListener("dblclick", (event) => {
      event.stopPropagation();
      this.resetView();
    });
  }

  // ----- images
  setEntries(entries) {
    this.entries = entries;
    this.previous.style.display = this.next.style.display = entries.length > 1 ? "" : "none";
    this.show(0);
  }

  async show(index) {
    if (!this.entries.length) return;
    this.index = ((index % this.entries.length) + this.entries.length) % this.entries.length;
    const entry = this.entries[this.index];
    const token = ++this.loadToken;
    this.setStatus("loading the panorama…");
    try {
      const image = await loadImage(viewUrl({ filename: entry.filename, subfolder: entry.subfolder ?? "",
                                              type: entry.type ?? "temp" }));
      if (token !== this.loadToken) return;
      const canvas = el("canvas", { width: image.naturalWidth, height: image.naturalHeight });
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(image, 0, 0);
      this.source = ctx.getImageData(0, 0, canvas.width, canvas.height);
      this.resize();
      this.requestRender();
    } catch (error) {
      if (token !== this.loadToken) return;
      this.source = null;
      this.setStatus(`panorama not found: ${entry.filename}`);
      this.requestRender();
    }
  }

  dispose() {
    this.resizeObserver.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
    this.loadToken++;
  }
}

function attach(node) {
  const viewer = new PanoramaViewer(node);
  const widget = node.addDOMWidget("panorama_360", "gs_panorama_viewer", viewer.element, {
    serialize: false, // a view of the last run's output, not an input
    hideOnZoom: false,
    getMinHeight: () => VIEWER_MIN_HEIGHT,
  });
  widget.serialize = false;
  node.gsPanoramaViewer = viewer;
  node.gsPanoramaWidget = widget;
  const [width, height] = node.size;
  const needed = node.computeSize?.() ?? [width, height];
  node.setSize([Math.max(width, 440), Math.max(height, needed[1])]);
  node.setDirtyCanvas?.(true, true);
  return viewer;
}

function detach(node) {
  const widget = node.gsPanoramaWidget;
  node.gsPanoramaViewer?.dispose();
  node.gsPanoramaViewer = null;
  node.gsPanoramaWidget = null;
  if (widget && node.widgets?.includes(widget)) node.removeWidget(widget);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "guidedsynthesis.panorama_viewer",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.includes(nodeData?.name)) return;
    chain(nodeType.prototype, "onExecuted", function (output) {
      const entries = (output?.[UI_KEY] ?? []).filter((e) => e && typeof e.filename === "string");
      if (!entries.length) {
        // a run without loop / circular: no panorama to look around
        if (this.gsPanoramaViewer) detach(this);
        return;
      }
      (this.gsPanoramaViewer ?? attach(this)).setEntries(entries);
    });
    chain(nodeType.prototype, "onRemoved", function () { this.gsPanoramaViewer?.dispose(); });
  },
});
