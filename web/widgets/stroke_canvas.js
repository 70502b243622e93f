// Stroke Canvas widget for GS_StrokeCanvas: paint strokes inside the node.
//
// The painting is a layer of hard-edged RGBA pixels (alpha 0 = not painted, 255 = paint; no
// anti-aliasing, so colours stay exact for region-based nodes and bucket fill). After each edit it is
// uploaded as a PNG to ComfyUI's input folder (subfolder "guided_synthesis", POST /upload/image, as the
// mask editor does) under a name derived from its pixels, and only the reference
// ("guided_synthesis/stroke_canvas_<hash>.png [input]") is stored in the node's "painting" widget, so
// workflows stay small and reload with their painting. The background shown under the strokes is the
// "background_color" widget, or the node's "image" input as of its last run.
import { app } from "../../../scripts/app.js";
import { chain, el } from "../lib/dom.js";
import { annotatedName, loadImage, parseAnnotated, uploadImage, viewUrl } from "../lib/upload.js";

export const NODE_TYPE = "GS_StrokeCanvas";
const UPLOAD_SUBFOLDER = "guided_synthesis";
const BACKGROUND_UI_KEY = "gs_canvas_background";
const PALETTE = [
  "#000000", "#ffffff", "#7f7f7f", "#e03c31", "#f28c28", "#f5d327",
  "#4caf50", "#1b5e20", "#6ec6ff", "#1e5bd8", "#8e44ad", "#8d5524",
];
const UNDO_STEPS = 50; // undo snapshots kept, at most...
const UNDO_BYTES = 64 * 1024 * 1024; // ...and at most this much memory (large canvases keep fewer)
const UPLOAD_DELAY_MS = 250;
const CONTROLS_HEIGHT = 96; // toolbar + palette + status, in px

// ---------------------------------------------------------------------------------------------
// Pixel operations on an ImageData (pure; exported for reuse)

export function parseHex(hex) {
  // the node's rule (guidance/checks.py parse_hex_colour): #rrggbb, rrggbb or #rgb
  const m = /^(?:#?([0-9a-f]{6})|#([0-9a-f]{3}))$/i.exec(String(hex).trim());
  if (!m) return null;
  const v = parseInt(m[1] ?? [...m[2]].map((c) => c + c).join(""), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

/** Set a filled disc of radius r at (cx, cy) to rgba (hard edge). Returns the touched box or null. */
function stampDisc(image, cx, cy, r, rgba) {
  const { width, height, data } = image;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(width - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(height - 1, Math.ceil(cy + r));
  if (x0 > x1 || y0 > y1) return null;
  const r2 = r * r;
  for (let y = y0; y <= y1; y++) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx;
      if (dx * dx + dy * dy > r2) continue;
      const i = (y * width + x) * 4;
      data[i] = rgba[0]; data[i + 1] = rgba[1]; data[i + 2] = rgba[2]; data[i + 3] = rgba[3];
    }
  }
  return [x0, y0, x1, y1];
}

/** Stamp discs along the segment a -> b. Returns the touched box or null. */
export function strokeSegment(image, a, b, size, rgba) {
  const r = Math.max(0.5, size / 2);
  const length = Math.hypot(b[0] - a[0], b[1] - a[1]);
  const steps = Math.max(1, Math.ceil(length / Math.max(0.5, r * 0.35)));
  let box = null;
  for (let s = 0; s <= steps; s++) {
    const t = s / steps;
    const touched = stampDisc(image, a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, r, rgba);
    if (touched) box = box ? [Math.min(box[0], touched[0]), Math.min(box[1], touched[1]),
      Math.max(box[2], touched[2]), Math.max(box[3], touched[3])] : touched;
  }
  return box;
}

/** Flood-fill the 4-connected region of the seed pixel's colour (all transparent pixels count as one
 *  colour) with rgba. Returns the number of pixels changed. */
export function floodFill(image, sx, sy, rgba) {
  const { width, height, data } = image;
  if (sx < 0 || sy < 0 || sx >= width || sy >= height) return 0;
  const seed = (sy * width + sx) * 4;
  const target = [data[seed], data[seed + 1], data[seed + 2], data[seed + 3]];
  const same = (i) => (target[3] === 0 ? data[i + 3] === 0
    : data[i] === target[0] && data[i + 1] === target[1] && data[i + 2] === target[2] && data[i + 3] === target[3]);
  if (target[3] !== 0 && target.every((v, k) => v === rgba[k])) return 0;
  if (target[3] === 0 && rgba[3] === 0) return 0;
  const seen = new Uint8Array(width * height);
  const stack = [sx, sy];
  let changed = 0;
  while (stack.length) {
    const y = stack.pop(), x0 = stack.pop();
    let x = x0;
    while (x > 0 && !seen[y * width + x - 1] && same((y * width + x - 1) * 4)) x--;
    let above = false, below = false;
    for (; x < width; x++) {
      const p = y * width + x;
      if (seen[p] || !same(p * 4)) break;
      seen[p] = 1;
      const i = p * 4;
      data[i] = rgba[0]; data[i + 1] = rgba[1]; data[i + 2] = rgba[2]; data[i + 3] = rgba[3];
      changed++;
      for (const [ny, flag] of [[y - 1, "above"], [y + 1, "below"]]) {
        if (ny < 0 || ny >= height) continue;
        const q = ny * width + x;
        const open = !seen[q] && same(q * 4);
        if (flag === "above") { if (open && !above) stack.push(x, ny); above = open; }
        else { if (open && !below) stack.push(x, ny); below = open; }
      }
    }
  }
  return changed;
}

/** 64-bit FNV-1a of the pixels (two 32-bit lanes) as 16 hex digits: the painting's file name. */
export function pixelHash(data) {
  let h1 = 0x811c9dc5, h2 = 0x01000193 ^ data.length;
  for (let i = 0; i < data.length; i++) {
    h1 = Math.imul(h1 ^ data[i], 0x01000193);
    h2 = Math.imul(h2 ^ data[i] ^ (i & 255), 0x0100019d);
  }
  return (h1 >>> 0).toString(16).padStart(8, "0") + (h2 >>> 0).toString(16).padStart(8, "0");
}

function isEmpty(data) {
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return false;
  return true;
}

/** Nearest-neighbour resample of an ImageData to width x height (keeps colours exact). */
function resample(source, width, height) {
  const out = new ImageData(width, height);
  for (let y = 0; y < height; y++) {
    const sy = Math.min(source.height - 1, Math.floor(((y + 0.5) * source.height) / height));
    for (let x = 0; x < width; x++) {
      const sx = Math.min(source.width - 1, Math.floor(((x + 0.5) * source.width) / width));
      const i = (y * width + x) * 4, j = (sy * source.width + sx) * 4;
      out.data[i] = source.data[j]; out.data[i + 1] = source.data[j + 1];
      out.data[i + 2] = source.data[j + 2]; out.data[i + 3] = source.data[j + 3];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The widget

const BUTTON_STYLE = {
  padding: "2px 6px", fontSize: "12px", cursor: "pointer", borderRadius: "4px",
  border: "1px solid var(--border-color, #555)", background: "var(--comfy-input-bg, #222)",
  color: "var(--input-text, #ddd)",
};

class StrokeCanvasWidget {
  constructor(node) {
    this.node = node;
    this.tool = "brush";
    this.color = PALETTE[3];
    this.brushSize = 16;
    this.undoStack = [];
    this.redoStack = [];
    this.background = null; // HTMLImageElement from the last run's "image" input
    this.uploadTimer = null;
    this.uploading = Promise.resolve();
    this.dirty = false; // edited since the last upload started
    this.pending = 0; // uploads started and not finished
    this.loadToken = 0;
    this.drawing = null;

    this.widgetByName = (name) => node.widgets?.find((w) => w.name === name);
    const size = this.canvasSize();
    this.pixels = new ImageData(size[0], size[1]);
    this.layer = el("canvas", { width: size[0], height: size[1] });
    this.canvas = el("canvas", {
      width: size[0], height: size[1], class: "gs-stroke-canvas-surface",
      style: { cursor: "crosshair", touchAction: "none", flex: "0 0 auto",
        imageRendering: "pixelated", boxShadow: "0 0 0 1px var(--border-color, #555)" },
    });
    this.buildDom();
    this.bindPointer();
    this.redraw();
    // Show the canvas as large as the node allows, keeping its aspect ratio (small canvases scale up).
    this.resizeObserver = new ResizeObserver(() => this.fit());
    this.resizeObserver.observe(this.frame);
  }

  fit() {
    const { clientWidth, clientHeight } = this.frame;
    if (!clientWidth || !clientHeight) return;
    const scale = Math.min(clientWidth / this.canvas.width, clientHeight / this.canvas.height);
    this.canvas.style.width = `${Math.max(1, Math.floor(this.canvas.width * scale))}px`;
    this.canvas.style.height = `${Math.max(1, Math.floor(this.canvas.height * scale))}px`;
  }

  canvasSize() {
    const w = Number(this.widgetByName("width")?.value) || 512;
    const h = Number(this.widgetByName("height")?.value) || 512;
    return [Math.max(1, Math.round(w)), Math.max(1, Math.round(h))];
  }

  // ----- DOM
  buildDom() {
    const button = (label, title, onClick, extra = {}) =>
      el("button", { type: "button", title, style: BUTTON_STYLE, on: { click: onClick }, ...extra }, label);
    this.toolButtons = {
      brush: button("Brush", "Paint with the brush colour", () => this.setTool("brush"), { dataset: { tool: "brush" } }),
      eraser: button("Eraser", "Erase paint (back to transparent)", () => this.setTool("eraser"), { dataset: { tool: "eraser" } }),
      fill: button("Fill", "Bucket fill: fill the clicked region of one colour", () => this.setTool("fill"), { dataset: { tool: "fill" } }),
    };
    this.colorInput = el("input", {
      type: "color", value: this.color, title: "Brush colour",
      style: { width: "28px", height: "22px", padding: "0", border: "none", background: "none" },
      on: { input: (e) => this.setColor(e.target.value) },
    });
    this.sizeInput = el("input", {
      type: "range", min: "1", max: "128", value: String(this.brushSize), title: "Brush size (pixels)",
      style: { width: "80px" }, on: { input: (e) => this.setBrushSize(e.target.value) },
    });
    this.sizeLabel = el("span", { style: { fontSize: "11px", minWidth: "28px" } }, `${this.brushSize}px`);
    this.undoButton = button("Undo", "Undo the last edit", () => this.undo(), { dataset: { action: "undo" } });
    this.redoButton = button("Redo", "Redo", () => this.redo(), { dataset: { action: "redo" } });
    const clearButton = button("Clear", "Erase the whole painting", () => this.clearAll(), { dataset: { action: "clear" } });
    this.swatches = PALETTE.map((hex) => el("button", {
      type: "button", title: hex, dataset: { color: hex },
      style: { width: "18px", height: "18px", padding: "0", cursor: "pointer", background: hex,
        border: "1px solid #888", borderRadius: "3px" },
      on: { click: () => this.setColor(hex) },
    }));
    this.status = el("div", { class: "gs-stroke-canvas-status",
      style: { fontSize: "11px", opacity: "0.8", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" } });
    const row = (children) => el("div", { style: { display: "flex", gap: "4px", alignItems: "center", flexWrap: "wrap" } }, children);
    this.element = el("div", {
      class: "gs-stroke-canvas",
      style: { display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
        boxSizing: "border-box", color: "var(--input-text, #ddd)" },
    }, [
      row([...Object.values(this.toolButtons), this.colorInput, this.sizeInput, this.sizeLabel]),
      row([...this.swatches, this.undoButton, this.redoButton, clearButton]),
      this.frame = el("div", { style: { flex: "1 1 auto", minHeight: "0", display: "flex", alignItems: "center",
        justifyContent: "center", overflow: "hidden" } }, [this.canvas]),
      this.status,
    ]);
    this.setTool("brush");
    this.setColor(this.color);
    this.updateButtons();
  }

  setTool(tool) {
    this.tool = tool;
    for (const [name, b] of Object.entries(this.toolButtons)) {
      b.style.outline = name === tool ? "2px solid var(--p-primary-color, #4a9eff)" : "none";
      b.setAttribute("aria-pressed", String(name === tool));
    }
  }

  setColor(hex) {
    if (!parseHex(hex)) return;
    this.color = hex.toLowerCase();
    this.colorInput.value = this.color;
    for (const s of this.swatches) s.style.outline = s.dataset.color === this.color ? "2px solid #fff" : "none";
    if (this.tool === "eraser") this.setTool("brush");
  }

  setBrushSize(value) {
    this.brushSize = Math.max(1, Math.min(128, Number(value) || 1));
    this.sizeInput.value = String(this.brushSize);
    this.sizeLabel.textContent = `${this.brushSize}px`;
  }

  setStatus(text, isError = false) {
    this.status.textContent = text;
    this.status.style.color = isError ? "var(--error-text, #ff6b6b)" : "";
    this.status.title = text;
  }

  updateButtons() {
    this.undoButton.disabled = this.undoStack.length === 0;
    this.redoButton.disabled = this.redoStack.length === 0;
    this.undoButton.style.opacity = this.undoButton.disabled ? "0.5" : "1";
    this.redoButton.style.opacity = this.redoButton.disabled ? "0.5" : "1";
  }

  // ----- drawing
  redraw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    ctx.clearRect(0, 0, width, height);
    const bg = this.widgetByName("background_color")?.value;
    ctx.fillStyle = parseHex(bg) ? `#${parseHex(bg).map((v) => v.toString(16).padStart(2, "0")).join("")}` : "#ffffff";
    ctx.fillRect(0, 0, width, height);
    if (this.background) {
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(this.background, 0, 0, width, height);
    }
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.layer, 0, 0);
  }

  commitPixels(box = null) {
    const ctx = this.layer.getContext("2d");
    if (box) ctx.putImageData(this.pixels, 0, 0, box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1);
    else ctx.putImageData(this.pixels, 0, 0);
    this.redraw();
  }

  replacePixels(image) {
    this.pixels = image;
    for (const c of [this.layer, this.canvas]) {
      if (c.width !== image.width) c.width = image.width;
      if (c.height !== image.height) c.height = image.height;
    }
    this.fit();
    this.commitPixels();
  }

  eventPoint(event) {
    const rect = this.canvas.getBoundingClientRect();
    return [((event.clientX - rect.left) * this.canvas.width) / rect.width,
      ((event.clientY - rect.top) * this.canvas.height) / rect.height];
  }

  paintRgba() {
    return this.tool === "eraser" ? [0, 0, 0, 0] : [...parseHex(this.color), 255];
  }

  bindPointer() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      event.stopPropagation();
      const point = this.eventPoint(event);
      if (this.tool === "fill") {
        this.pushUndo();
        const changed = floodFill(this.pixels, Math.floor(point[0]), Math.floor(point[1]), this.paintRgba());
        if (changed === 0) this.undoStack.pop();
        else {
          this.commitPixels();
          this.edited();
        }
        this.updateButtons();
        return;
      }
      c.setPointerCapture?.(event.pointerId);
      this.pushUndo();
      this.drawing = { last: point, rgba: this.paintRgba() };
      this.commitPixels(strokeSegment(this.pixels, point, point, this.brushSize, this.drawing.rgba));
    });
    c.addEventListener("pointermove", (event) => {
      if (!this.drawing) return;
      event.preventDefault();
      event.stopPropagation();
      const point = this.eventPoint(event);
      const box = strokeSegment(this.pixels, this.drawing.last, point, this.brushSize, this.drawing.rgba);
      this.drawing.last = point;
      if (box) this.commitPixels(box);
    });
    const end = (event) => {
      if (!this.drawing) return;
      event.stopPropagation();
      this.drawing = null;
      this.edited();
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    // Keep the graph canvas from treating paint gestures as node drags / zooms.
    c.addEventListener("wheel", (event) => event.stopPropagation());
  }

  // ----- history
  snapshotBytes() {
    return this.pixels.data.length;
  }

  pushUndo() {
    this.undoStack.push(new ImageData(new Uint8ClampedArray(this.pixels.data), this.pixels.width, this.pixels.height));
    this.redoStack = [];
    const limit = Math.max(2, Math.min(UNDO_STEPS, Math.floor(UNDO_BYTES / this.snapshotBytes())));
    while (this.undoStack.length > limit) this.undoStack.shift();
    this.updateButtons();
  }

  undo() {
    const previous = this.undoStack.pop();
    if (!previous) return;
    this.redoStack.push(this.pixels);
    this.replacePixels(previous);
    this.edited();
  }

  redo() {
    const next = this.redoStack.pop();
    if (!next) return;
    this.undoStack.push(this.pixels);
    this.replacePixels(next);
    this.edited();
  }

  clearAll() {
    if (isEmpty(this.pixels.data)) return;
    this.pushUndo();
    this.pixels = new ImageData(this.pixels.width, this.pixels.height);
    this.commitPixels();
    this.edited();
  }

  // ----- storage
  edited() {
    this.updateButtons();
    this.dirty = true;
    this.loadToken++; // an edit wins over a load still in flight
    clearTimeout(this.uploadTimer);
    this.uploadTimer = setTimeout(() => this.flush(), UPLOAD_DELAY_MS);
  }

  /** Upload pending edits now; resolves when the painting widget holds the current reference. */
  flush() {
    clearTimeout(this.uploadTimer);
    this.uploadTimer = null;
    if (this.dirty) {
      this.dirty = false;
      this.pending++;
      this.uploading = this.uploading.then(() => this.upload()).catch((error) => {
        this.dirty = true;
        this.setStatus(`upload failed: ${error.message}`, true);
      }).finally(() => { this.pending--; });
    }
    return this.uploading;
  }

  async upload() {
    // A copy: strokes made while the PNG is encoded or sent must not change what is hashed and sent.
    const image = new ImageData(new Uint8ClampedArray(this.pixels.data), this.pixels.width, this.pixels.height);
    if (isEmpty(image.data)) {
      this.setReference("", "nothing painted");
      return;
    }
    const name = `stroke_canvas_${pixelHash(image.data)}.png`;
    const canvas = el("canvas", { width: image.width, height: image.height });
    canvas.getContext("2d").putImageData(image, 0, 0);
    const blob = await new Promise((resolve, reject) =>
      canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("PNG encoding failed"))), "image/png"));
    this.setStatus("saving…");
    const saved = await uploadImage(blob, name, { subfolder: UPLOAD_SUBFOLDER, type: "input" });
    if (this.dirty) return; // edited meanwhile: the next upload names the newer painting
    this.setReference(annotatedName(saved), `saved ${saved.subfolder}/${saved.name}`);
  }

  setReference(reference, status) {
    const widget = this.widgetByName("painting");
    this.ownReference = reference;
    if (widget && widget.value !== reference) {
      widget.value = reference;
      this.node.setDirtyCanvas?.(true, true);
      app.graph?.change?.();
    }
    this.setStatus(status);
  }

  /** Show the painting a reference points at (after a workflow load, or a typed reference). */
  async load(reference) {
    const token = ++this.loadToken;
    const [width, height] = this.canvasSize();
    const ref = parseAnnotated(reference);
    this.undoStack = [];
    this.redoStack = [];
    this.updateButtons();
    if (!ref) {
      this.replacePixels(new ImageData(width, height));
      this.setStatus("nothing painted");
      return;
    }
    try {
      const image = await loadImage(viewUrl(ref));
      if (token !== this.loadToken) return;
      const canvas = el("canvas", { width, height });
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(image, 0, 0, width, height);
      this.replacePixels(ctx.getImageData(0, 0, width, height));
      if (image.naturalWidth !== width || image.naturalHeight !== height) {
        this.setStatus(`painting is ${image.naturalWidth}x${image.naturalHeight}, canvas is ${width}x${height}: ` +
          "paint or change width/height to save it at the canvas size", true);
      } else {
        this.setStatus(`loaded ${ref.subfolder ? `${ref.subfolder}/` : ""}${ref.filename}`);
      }
    } catch (error) {
      if (token !== this.loadToken) return;
      this.replacePixels(new ImageData(width, height));
      this.setStatus(`painting not found: ${ref.filename}`, true);
    }
  }

  /** width/height changed: rescale the painting to the new canvas size and save it. */
  resize() {
    const [width, height] = this.canvasSize();
    if (width === this.pixels.width && height === this.pixels.height) return;
    this.undoStack = [];
    this.redoStack = [];
    this.replacePixels(resample(this.pixels, width, height));
    if (!isEmpty(this.pixels.data)) this.edited();
    this.updateButtons();
  }

  async setBackground(ref) {
    if (!ref) {
      this.background = null;
      this.redraw();
      return;
    }
    try {
      this.background = await loadImage(viewUrl(ref));
    } catch (error) {
      this.background = null;
    }
    this.redraw();
  }
}

function attach(node) {
  const canvas = new StrokeCanvasWidget(node);
  node.gsStrokeCanvas = canvas;
  chain(node, "onRemoved", () => canvas.resizeObserver.disconnect());
  const widget = node.addDOMWidget("stroke_canvas", "gs_stroke_canvas", canvas.element, {
    serialize: false, // the painting is stored by reference in the "painting" widget, not here
    hideOnZoom: false,
    getMinHeight: () => CONTROLS_HEIGHT + 160,
  });
  widget.serialize = false;
  const painting = canvas.widgetByName("painting");
  if (painting) {
    // Queueing waits for the last edit's upload, so the prompt always names the current painting.
    painting.serializeValue = async () => {
      await canvas.flush();
      return painting.value;
    };
    // A reference typed into the widget is loaded; the widget's own uploads are not reloaded.
    chain(painting, "callback", (value) => { if (value !== canvas.ownReference) canvas.load(value); });
  }
  for (const name of ["width", "height"]) {
    const w = canvas.widgetByName(name);
    if (w) chain(w, "callback", () => canvas.resize());
  }
  const bg = canvas.widgetByName("background_color");
  if (bg) chain(bg, "callback", () => canvas.redraw());
  const [width, height] = node.size;
  node.setSize([Math.max(width, 380), Math.max(height, 600)]);
}

export function registerStrokeCanvas() {
  app.registerExtension({
    name: "guidedsynthesis.stroke_canvas",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name !== NODE_TYPE) return;
      chain(nodeType.prototype, "onNodeCreated", function () { attach(this); });
      chain(nodeType.prototype, "onConfigure", function () {
        const canvas = this.gsStrokeCanvas;
        if (!canvas) return;
        const [width, height] = canvas.canvasSize();
        canvas.replacePixels(new ImageData(width, height));
        canvas.load(canvas.widgetByName("painting")?.value);
      });
      chain(nodeType.prototype, "onExecuted", function (output) {
        const ref = output?.[BACKGROUND_UI_KEY]?.[0];
        if (ref) this.gsStrokeCanvas?.setBackground(ref);
      });
      chain(nodeType.prototype, "onConnectionsChange", function () {
        // isInputConnected, not input.link (deprecated since frontend 1.5x, which warns on every read)
        const slot = this.inputs?.findIndex((i) => i.name === "image") ?? -1;
        if (this.gsStrokeCanvas && slot >= 0 && !this.isInputConnected(slot) && this.gsStrokeCanvas.background) {
          this.gsStrokeCanvas.setBackground(null);
        }
      });
    },
  });
}
