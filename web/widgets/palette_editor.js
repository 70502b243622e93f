// Palette editor for GS_StrokeRegions ("Stroke Regions to Words").
//
// Shows the colour regions of the stroke painting as swatches with a phrase box beside each one,
// and writes the node's "region_spec" widget as "#rrggbb: phrase" lines. The region_spec string is
// the source of truth: it is what the workflow saves and what the node reads; the editor re-reads it
// whenever it is shown or the text is edited by hand. Lines the editor cannot attribute to a
// swatch (comments, bare phrases beyond the colours) are kept; lines naming a colour that is not in
// the painting are flagged (the node stops on them) with a button that removes them.
//
// Where the palette comes from:
//  - after a run, the node's UI output "gs_palette" (the regions the node found);
//  - before a run, when "stroke" comes straight from a Load Image node (or any node whose "image" input is
//    a file picker with upload, as Load Image's is), the chosen or uploaded file is read in the browser, and when it comes from the pack's Stroke Canvas, the painting as shown
//    (re-read as the user paints); the colours are found with the node's method (approximate: the
//    browser looks at up to 256 px);
//  - after a reload, the palette stored in the node's properties (kept while it belongs to the same file).
// A file that cannot be read (say, a workflow naming a painting that is not in the input folder) is reported
// once in the console and not read again until the file name changes.
// User text only ever goes into the page through value / textContent (lib/dom.js `el`).
import { app } from "../../../scripts/app.js";
import { chain, clear, el } from "../lib/dom.js";
import { loadImage, parseAnnotated, viewUrl } from "../lib/upload.js";

export const NODE_TYPE = "GS_StrokeRegions";
const UI_KEY = "gs_palette";
const PROPERTY = "gs_palette";
const SPEC_WIDGET = "region_spec";
const ROW_HEIGHT = 28;
// Explicit control styles: the frontend's Nodes 2.0 (Vue nodes) mode resets native form styles, and the
// classic mode leaves them to the browser; these keep the editor alike in both.
const INPUT_STYLE = { flex: "1", minWidth: "60px", padding: "2px 6px", fontSize: "12px", borderRadius: "4px",
                      border: "1px solid var(--border-color, #555)", background: "var(--comfy-input-bg, #222)",
                      color: "var(--input-text, #ddd)" };
const BUTTON_STYLE = { padding: "2px 8px", fontSize: "11px", cursor: "pointer", borderRadius: "4px",
                       border: "1px solid var(--border-color, #555)", background: "var(--comfy-input-bg, #222)",
                       color: "var(--input-text, #ddd)" };
const CANVAS_SETTLE_MS = 300;

// ---------------------------------------------------------------------------------------------
// Pure helpers (exported for tests)

const HEX_LINE = /^\s*(#[0-9a-f]{3}|#[0-9a-f]{6})\s*:(.*)$/i;

export function parseHex(text) {
  const m = /^#?([0-9a-f]{3}|[0-9a-f]{6})$/i.exec(String(text).trim());
  if (!m) return null;
  const digits = m[1].length === 3 ? [...m[1]].map((c) => c + c).join("") : m[1];
  const v = parseInt(digits, 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

export function toHex(rgb) {
  return "#" + rgb.map((c) => Math.max(0, Math.min(255, Math.round(c))).toString(16).padStart(2, "0")).join("");
}

function distance(a, b) {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

const NAME_LINE = /^\s*([A-Za-z][A-Za-z \-]*?)\s*:(.*)$/;
const FAMILIES = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "pink", "brown",
                  "black", "white", "grey"];
const ALIASES = { gray: "grey", violet: "purple", teal: "cyan", turquoise: "cyan" };

function parseName(key) {
  let words = key.toLowerCase().replace(/-/g, " ").split(/\s+/).filter(Boolean);
  let modifier = "";
  if (words.length === 2 && (words[0] === "light" || words[0] === "dark")) { modifier = words[0]; words = words.slice(1); }
  if (words.length !== 1) return null;
  const family = ALIASES[words[0]] ?? words[0];
  return FAMILIES.includes(family) ? { modifier, family } : null;
}

/** Lines of a region spec, as the node reads them: {raw, kind: "blank"|"comment"|"hex"|"name"|"bare",
 *  rgb / name, phrase}. */
export function parseSpec(text) {
  return String(text ?? "").split(/\r?\n/).map((raw) => {
    const line = raw.trim();
    if (!line) return { raw, kind: "blank" };
    if (line.startsWith("//")) return { raw, kind: "comment" };
    const hex = HEX_LINE.exec(line);
    if (hex) return { raw, kind: "hex", rgb: parseHex(hex[1]), phrase: hex[2].trim() };
    const named = NAME_LINE.exec(line);
    const name = named ? parseName(named[1]) : null;
    if (name) return { raw, kind: "name", name, phrase: named[2].trim() };
    return { raw, kind: "bare", phrase: line };
  });
}

/** Index of the palette colour a #rrggbb key names (nearest within 3x tolerance, as the node does). */
export function matchColour(rgb, colours, tolerance) {
  let best = -1, bestDistance = Infinity;
  colours.forEach((c, i) => {
    const d = distance(rgb, parseHex(c));
    if (d < bestDistance) { best = i; bestDistance = d; }
  });
  return bestDistance <= 3 * tolerance ? best : -1;
}

/** Which swatch each spec line names, as guidance/regions.py resolve_regions does: #rrggbb to the
 *  nearest colour, colour names to their hue family (light/dark pick among several), bare phrases to
 *  the remaining colours in palette order. Returns {phrases, used: Set of line indices}. */
export function resolveSpec(palette, spec) {
  const colours = palette.colours ?? [];
  const phrases = colours.map(() => "");
  const owner = colours.map(() => -1);
  const used = new Set();
  const lines = parseSpec(spec);
  const claim = (index, lineIndex) => {
    if (index < 0 || owner[index] >= 0 || !lines[lineIndex].phrase) return;
    owner[index] = lineIndex; phrases[index] = lines[lineIndex].phrase; used.add(lineIndex);
  };
  lines.forEach((line, k) => {
    if (line.kind === "hex") claim(matchColour(line.rgb, colours, palette.tolerance ?? 24), k);
    if (line.kind === "name") {
      const rgbs = colours.map(parseHex);
      let candidates = colours.map((_, i) => i).filter((i) => colourFamily(rgbs[i]) === line.name.family);
      if (candidates.length > 1 && line.name.modifier) {
        const light = candidates.map((i) => rgbs[i][0] + rgbs[i][1] + rgbs[i][2]);
        const pick = line.name.modifier === "light" ? Math.max(...light) : Math.min(...light);
        candidates = [candidates[light.indexOf(pick)]];
      }
      if (candidates.length === 1) claim(candidates[0], k);
    }
  });
  const free = colours.map((_, i) => i).filter((i) => owner[i] < 0);
  lines.forEach((line, k) => { if (line.kind === "bare" && free.length) claim(free.shift(), k); });
  return { phrases, used };
}

/** The phrase shown beside each swatch, read from the spec. */
export function phrasesFor(palette, spec) {
  return resolveSpec(palette, spec).phrases;
}

/** The new spec: one "#rrggbb: phrase" line per swatch with a phrase, then the lines of the old spec
 *  that name no swatch (comments, colours not in this painting, surplus phrases) unchanged. */
export function buildSpec(palette, phrases, oldSpec) {
  const { used } = resolveSpec(palette, oldSpec);
  const kept = parseSpec(oldSpec).filter((line, k) => line.kind !== "blank" && !used.has(k)).map((l) => l.raw);
  const own = (palette.colours ?? [])
    .map((colour, i) => [colour, String(phrases[i] ?? "").replace(/[\r\n]+/g, " ").trim()])
    .filter(([, phrase]) => phrase)
    .map(([colour, phrase]) => `${colour}: ${phrase}`);
  return [...own, ...kept].join("\n");
}

/** The lines of a spec that name a colour (#rrggbb or a colour name) matching no swatch of this palette:
 *  the node stops with an error on them (e.g. after a different painting was loaded). */
export function unmatchedLines(palette, spec) {
  const { used } = resolveSpec(palette, spec);
  return parseSpec(spec).filter((line, k) => (line.kind === "hex" || line.kind === "name") && !used.has(k));
}

/** The spec without its unmatched colour lines. */
export function dropUnmatched(palette, spec) {
  const stale = new Set(unmatchedLines(palette, spec).map((line) => line.raw));
  return String(spec ?? "").split(/\r?\n/).filter((raw) => !stale.has(raw)).join("\n");
}

/** A plain colour name (same hue families as guidance/regions.py colour_family). */
export function colourFamily(rgb) {
  const [r, g, b] = rgb.map((c) => c / 255);
  const max = Math.max(r, g, b), min = Math.min(r, g, b);
  const chroma = max - min, lightness = (max + min) / 2;
  const saturation = chroma === 0 ? 0 : chroma / (1 - Math.abs(2 * lightness - 1));
  if (chroma < 0.12 || saturation < 0.15) return max < 0.2 ? "black" : lightness > 0.85 ? "white" : "grey";
  if (max < 0.2) return "black";
  let hue;
  if (max === r) hue = ((g - b) / chroma + 6) % 6;
  else if (max === g) hue = (b - r) / chroma + 2;
  else hue = (r - g) / chroma + 4;
  const degrees = hue * 60;
  let family = degrees < 15 || degrees >= 345 ? "red" : degrees < 45 ? "orange" : degrees < 70 ? "yellow"
    : degrees < 165 ? "green" : degrees < 195 ? "cyan" : degrees < 255 ? "blue" : degrees < 290 ? "purple" : "magenta";
  if ((family === "red" || family === "orange") && max < 0.6 && lightness < 0.45) family = "brown";
  if ((family === "red" || family === "magenta") && lightness > 0.7) family = "pink";
  return family;
}

/** Colour regions of an ImageData, as guidance/regions.py extract_palette finds them: greedy seeds
 *  from a coarse histogram; a cluster is a region if it covers minArea of the image and its 3x3-eroded
 *  interior a quarter of that (so anti-aliased seams are not regions); at most maxRegions; every pixel
 *  to its nearest region colour; the most frequent exact shade; reading order. */
export function extractPalette(image, tolerance = 24, minArea = 0.002, maxRegions = 32) {
  const { width, height, data } = image;
  const total = width * height;
  const minPixels = Math.max(1, minArea * total);
  const bins = new Map();
  for (let p = 0; p < total; p++) {
    const i = p * 4;
    const key = ((data[i] >> 3) << 10) | ((data[i + 1] >> 3) << 5) | (data[i + 2] >> 3);
    let bin = bins.get(key);
    if (!bin) bins.set(key, (bin = { n: 0, sum: [0, 0, 0] }));
    bin.n++; bin.sum[0] += data[i]; bin.sum[1] += data[i + 1]; bin.sum[2] += data[i + 2];
  }
  const candidates = [...bins.values()].map((b) => ({ n: b.n, rgb: b.sum.map((s) => s / b.n) }))
    .sort((a, b) => b.n - a.n);
  let centres = [];
  for (const c of candidates) {
    if (c.n < minPixels * 0.25 || centres.length >= maxRegions * 2) break;
    if (centres.every((s) => distance(s, c.rgb) > tolerance)) centres.push(c.rgb);
  }
  if (!centres.length) return [];
  const label = new Int32Array(total);
  for (;;) {
    const counts = centres.map(() => 0);
    for (let p = 0; p < total; p++) {
      const i = p * 4, rgb = [data[i], data[i + 1], data[i + 2]];
      let best = 0, bestDistance = Infinity;
      centres.forEach((c, k) => { const d = distance(c, rgb); if (d < bestDistance) { best = k; bestDistance = d; } });
      label[p] = best;
      counts[best]++;
    }
    const interior = centres.map(() => 0);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const k = label[y * width + x];
        let inside = true;
        for (let dy = -1; dy <= 1 && inside; dy++) {
          const yy = Math.min(height - 1, Math.max(0, y + dy));
          for (let dx = -1; dx <= 1; dx++) {
            if (label[yy * width + Math.min(width - 1, Math.max(0, x + dx))] !== k) { inside = false; break; }
          }
        }
        if (inside) interior[k]++;
      }
    }
    let keep = counts.map((n, k) => n >= minPixels && interior[k] >= minPixels * 0.25);
    if (centres.length > maxRegions) {
      const cut = [...counts].sort((a, b) => b - a)[maxRegions - 1];
      keep = keep.map((kept, k) => kept && counts[k] >= cut);
    }
    if (!keep.some(Boolean)) {
      centres = [centres[counts.indexOf(Math.max(...counts))]];
      continue;
    }
    if (keep.every(Boolean)) break;
    centres = centres.filter((_, k) => keep[k]);
  }
  const first = centres.map(() => -1);
  const counts = centres.map(() => 0);
  const shades = centres.map(() => new Map());
  for (let p = 0; p < total; p++) {
    const k = label[p], i = p * 4;
    if (first[k] < 0) first[k] = p;
    counts[k]++;
    const code = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    shades[k].set(code, (shades[k].get(code) ?? 0) + 1);
  }
  return centres.map((_, k) => k).sort((a, b) => first[a] - first[b]).map((k) => {
    let code = 0, most = -1;
    for (const [c, n] of shades[k]) if (n > most) { most = n; code = c; }
    const rgb = [(code >> 16) & 255, (code >> 8) & 255, code & 255];
    return { colour: toHex(rgb), name: colourFamily(rgb), area: counts[k] / total };
  });
}

// ---------------------------------------------------------------------------------------------
// The widget

function referenceKey({ type, subfolder, filename }) {
  return `${type}/${subfolder}/${filename}`;
}

class PaletteEditor {
  constructor(node) {
    this.node = node;
    this.rows = el("div", { class: "gs-palette-rows", style: { display: "flex", flexDirection: "column", gap: "3px" } });
    this.status = el("div", { class: "gs-palette-status", style: { fontSize: "11px", opacity: "0.75" } });
    this.staleText = el("span", { style: { flex: "1" } });
    this.stale = el("div", { class: "gs-palette-stale", style: { display: "none", alignItems: "center", gap: "6px",
                                                                 fontSize: "11px", color: "#e8a33d" } }, [
      this.staleText,
      el("button", { type: "button", class: "gs-palette-drop", title: "Remove these lines from region_spec",
                     text: "Remove", style: BUTTON_STYLE, on: { click: () => this.dropStale() } }),
    ]);
    this.element = el("div", {
      class: "gs-palette-editor",
      style: { display: "flex", flexDirection: "column", gap: "4px", padding: "4px", boxSizing: "border-box",
               fontFamily: "sans-serif", fontSize: "12px", overflowY: "auto", color: "var(--input-text, #ddd)" },
    }, [this.status, this.stale, this.rows]);
    this.inputs = [];
    this.loadingFor = null; // the file being read now
    this.failedFor = null; // the file whose read failed (not tried again while it stays the chosen file)
  }

  get specWidget() {
    return this.node.widgets?.find((w) => w.name === SPEC_WIDGET);
  }

  get palette() {
    return this.node.properties?.[PROPERTY] ?? null;
  }

  setPalette(palette) {
    this.node.properties = this.node.properties ?? {};
    this.node.properties[PROPERTY] = palette;
    this.render();
  }

  writeSpec() {
    const widget = this.specWidget;
    const palette = this.palette;
    if (!widget || !palette) return;
    const phrases = this.inputs.map((input) => input.value);
    this.setSpec(buildSpec(palette, phrases, widget.value ?? ""));
  }

  setSpec(spec) {
    const widget = this.specWidget;
    if (!widget || spec === widget.value) return;
    this.writing = true; // the frontend may call the widget's callback; the rows must not be rebuilt mid-typing
    try {
      widget.value = spec;
    } finally {
      this.writing = false;
    }
    this.node.graph?.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
  }

  dropStale() {
    if (!this.palette) return;
    this.setSpec(dropUnmatched(this.palette, this.specWidget?.value ?? ""));
    this.render();
  }

  renderStatus(palette) {
    const source = { upload: "from the loaded image", canvas: "from the stroke canvas" }[palette.source] ?? "from the last run";
    this.status.textContent = `${palette.colours.length} colour regions ${source}; type what each one is.`;
  }

  renderStale(palette, spec) {
    const stale = palette ? unmatchedLines(palette, spec) : [];
    this.stale.style.display = stale.length ? "flex" : "none";
    this.staleText.textContent = stale.length
      ? `${stale.length === 1 ? "This line names a colour" : `${stale.length} lines name colours`} not in this ` +
        `painting (the node stops on them): ${stale.map((line) => line.raw.trim()).join(" | ")}`
      : "";
  }

  /** Show the palette and the spec's phrases. The rows are rebuilt only when the palette changes; otherwise
   *  the phrase boxes are updated in place (never the one being typed in). */
  render() {
    if (this.writing) return;
    const palette = this.palette;
    const spec = this.specWidget?.value ?? "";
    this.renderStale(palette?.colours?.length ? palette : null, spec);
    const key = JSON.stringify([palette?.colours, palette?.names, palette?.areas]);
    if (key === this.renderedKey && this.inputs.length) {
      const phrases = phrasesFor(palette, spec);
      this.inputs.forEach((input, i) => {
        if (input !== document.activeElement && input.value !== phrases[i]) input.value = phrases[i];
      });
      this.renderStatus(palette);
      return;
    }
    this.renderedKey = key;
    clear(this.rows);
    this.inputs = [];
    if (!palette || !palette.colours?.length) {
      this.status.textContent = "Run the node (or load the painting with a Load Image node) to see its colour regions.";
      this.node.setDirtyCanvas?.(true, true);
      return;
    }
    const phrases = phrasesFor(palette, spec);
    this.renderStatus(palette);
    palette.colours.forEach((colour, i) => {
      const safeColour = toHex(parseHex(colour) ?? [0, 0, 0]);
      const name = palette.names?.[i] ?? colourFamily(parseHex(safeColour));
      const area = palette.areas?.[i] != null ? ` ${Math.round(palette.areas[i] * 100)}%` : "";
      const input = el("input", {
        type: "text", placeholder: `what is the ${name} region?`, "aria-label": `phrase for ${safeColour}`,
        style: INPUT_STYLE,
        on: { input: () => this.writeSpec(), keydown: (event) => event.stopPropagation() },
      });
      input.value = phrases[i];
      this.inputs.push(input);
      this.rows.append(el("div", { style: { display: "flex", alignItems: "center", gap: "6px", height: `${ROW_HEIGHT - 4}px` } }, [
        el("span", { text: String(i + 1), style: { width: "14px", textAlign: "right", opacity: "0.7" } }),
        el("span", { title: `${safeColour} (${name})`, style: { width: "22px", height: "18px", background: safeColour,
                                                                 border: "1px solid #888", borderRadius: "3px", flex: "none" } }),
        el("span", { text: `${safeColour}${area}`, style: { width: "92px", fontFamily: "monospace", fontSize: "11px" } }),
        input,
      ]));
    });
    const size = this.node.computeSize?.();
    if (size && this.node.size && this.node.size[1] < size[1]) this.node.setSize?.([this.node.size[0], size[1]]);
    this.node.setDirtyCanvas?.(true, true);
  }

  /** Which Load Image file feeds "stroke" now (null if none). */
  sourceImageKey() {
    const reference = parseAnnotated(this.sourceImageLoader()?.widgets?.find((w) => w.name === "image")?.value);
    return reference ? referenceKey(reference) : null;
  }

  /** The node feeding "stroke" directly, if any. */
  sourceNode() {
    const slot = this.node.inputs?.findIndex((i) => i.name === "stroke") ?? -1;
    return slot < 0 ? null : this.node.getInputNode?.(slot) ?? null;
  }

  /** The node feeding "stroke" directly if it picks a file of the input folder as Load Image does: its
   *  definition's "image" input is a file list with upload (image_upload). Recognised by that input, not by
   *  the node's type, so other loaders built the same way work too. */
  sourceImageLoader() {
    const source = this.sourceNode();
    const spec = source?.constructor?.nodeData?.input?.required?.image;
    return spec?.[1]?.image_upload ? source : null;
  }

  /** The pack's Stroke Canvas widget feeding "stroke" directly, if any. */
  sourceStrokeCanvas() {
    return this.sourceNode()?.gsStrokeCanvas ?? null;
  }

  /** Find the palette in the browser from whatever feeds "stroke": a Load Image file, or the Stroke
   *  Canvas painting as it is shown (painting over its background, what the node composites). */
  readSource() {
    if (this.sourceStrokeCanvas()) return this.watchCanvas();
    return this.readUpload();
  }

  readPixels(source, width, height) {
    const scale = Math.min(1, 256 / Math.max(width, height));
    const canvas = el("canvas", { width: Math.max(1, Math.round(width * scale)),
                                  height: Math.max(1, Math.round(height * scale)) });
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.imageSmoothingEnabled = false; // keep painted colours exact
    context.drawImage(source, 0, 0, canvas.width, canvas.height);
    const tolerance = this.node.widgets?.find((w) => w.name === "colour_tolerance")?.value ?? 24;
    const minPercent = this.node.widgets?.find((w) => w.name === "min_region_percent")?.value ?? 0.2;
    const regions = extractPalette(context.getImageData(0, 0, canvas.width, canvas.height), tolerance, minPercent / 100);
    return { colours: regions.map((r) => r.colour), names: regions.map((r) => r.name),
             areas: regions.map((r) => r.area), tolerance };
  }

  watchCanvas() {
    const strokeCanvas = this.sourceStrokeCanvas();
    if (!strokeCanvas.gsPaletteWatch) {
      strokeCanvas.gsPaletteWatch = new Set();
      // Every visible change (stroke, fill, undo, background) redraws; read the result once it settles.
      chain(strokeCanvas, "redraw", () => {
        clearTimeout(strokeCanvas.gsPaletteTimer);
        strokeCanvas.gsPaletteTimer = setTimeout(
          () => strokeCanvas.gsPaletteWatch.forEach((editor) => editor.readCanvas()), CANVAS_SETTLE_MS);
      });
    }
    strokeCanvas.gsPaletteWatch.add(this);
    this.readCanvas();
  }

  readCanvas() {
    const strokeCanvas = this.sourceStrokeCanvas();
    if (!strokeCanvas) return; // disconnected since
    const { canvas } = strokeCanvas;
    const found = this.readPixels(canvas, canvas.width, canvas.height);
    const current = this.palette;
    if (current && JSON.stringify(current.colours) === JSON.stringify(found.colours)) return; // same regions
    this.setPalette({ ...found, source: "canvas" });
  }

  async readUpload() {
    const source = this.sourceImageLoader();
    const widget = source?.widgets?.find((w) => w.name === "image");
    if (!widget) return;
    if (!widget.gsPaletteWatch) {
      widget.gsPaletteWatch = new Set();
      chain(widget, "callback", () => widget.gsPaletteWatch.forEach((editor) => editor.readUpload()));
    }
    widget.gsPaletteWatch.add(this);
    const reference = parseAnnotated(widget.value);
    if (!reference) return;
    const key = referenceKey(reference);
    if (this.palette?.image === key) return; // already this painting's palette (e.g. stored with the workflow)
    // Loading a workflow calls this once per linked slot: one read per file, and a failed read is reported
    // once, not retried until another file is chosen.
    if (this.loadingFor === key || this.failedFor === key) return;
    this.failedFor = null;
    this.loadingFor = key;
    try {
      const image = await loadImage(viewUrl(reference));
      if (this.loadingFor !== key || this.sourceImageLoader() !== source) return;
      this.setPalette({ ...this.readPixels(image, image.naturalWidth, image.naturalHeight), source: "upload", image: key });
    } catch (error) {
      if (this.loadingFor !== key) return; // another file was chosen meanwhile
      this.failedFor = key;
      console.warn(`[guided_synthesis] palette editor: could not read the stroke image ${reference.filename}`, error);
    } finally {
      if (this.loadingFor === key) this.loadingFor = null;
    }
  }
}

function attach(node) {
  const editor = new PaletteEditor(node);
  node.gsPaletteEditor = editor;
  const widget = node.addDOMWidget("palette_editor", "gs_palette_editor", editor.element, {
    serialize: false, // the phrases live in region_spec; the palette in node.properties
    hideOnZoom: false,
    // padding, status line, the warning line when shown, one row per swatch
    getMinHeight: () => 36 + (editor.stale.style.display === "none" ? 0 : 40) + ROW_HEIGHT * Math.max(1, editor.palette?.colours?.length ?? 1),
  });
  widget.serialize = false;
  const spec = editor.specWidget;
  if (spec) {
    // Hand edits of region_spec re-read the phrases (the textarea's own input event, and the widget
    // callback for programmatic changes).
    chain(spec, "callback", () => editor.render());
    spec.element?.addEventListener?.("input", () => editor.render());
  }
  editor.render();
}

app.registerExtension({
  name: "guidedsynthesis.palette_editor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () { attach(this); });
    chain(nodeType.prototype, "onConfigure", function () {
      // After a workflow loads: the stored palette and the saved region_spec, then the painting itself
      // (a stored palette of the same Load Image file is kept).
      const editor = this.gsPaletteEditor;
      if (!editor) return;
      editor.render();
      setTimeout(() => editor.readSource(), 0);
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      const data = output?.[UI_KEY]?.[0];
      if (!data || !Array.isArray(data.colours)) return;
      const { colours, names, areas, tolerance } = data;
      const editor = this.gsPaletteEditor;
      editor?.setPalette({ colours, names, areas, tolerance, source: "run", image: editor.sourceImageKey() });
    });
    chain(nodeType.prototype, "onConnectionsChange", function (type, index) {
      // Only a change of what feeds "stroke" (an input slot: LiteGraph.INPUT is 1) matters here.
      const editor = this.gsPaletteEditor;
      if (type !== 1 || this.inputs?.[index]?.name !== "stroke") return;
      if (editor?.sourceNode()) editor.readSource();
    });
  },
});
