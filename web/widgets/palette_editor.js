// Palette editor for GS_StrokeRegions ("Stroke Regions to Words").
//
// Shows the colour regions of the stroke painting as swatches with a phrase box beside each one,
// and writes the node's "region_spec" widget as "#rrggbb: phrase" lines. The region_spec string is
// the source of truth: it is what the workflow saves and what the node reads; the editor re-reads it
// whenever it is shown or the text is edited by hand. Lines the editor cannot attribute to a
// swatch (comments, colours not in the painting, bare phrases before the first run) are kept.
//
// Where the palette comes from:
//  - after a run, the node's UI output "gs_palette" (the regions the node found);
//  - before a run, when "stroke" comes straight from a LoadImage node, the chosen/uploaded image is
//    read in the browser and its colours are found with the same method (approximate: the browser
//    sees the file at up to 256 px);
//  - after a reload, the palette stored in the node's properties.
// User text only ever goes into the page through value / textContent (lib/dom.js `el`).
import { app } from "../../../scripts/app.js";
import { chain, clear, el } from "../lib/dom.js";
import { loadImage, parseAnnotated, viewUrl } from "../lib/upload.js";

export const NODE_TYPE = "GS_StrokeRegions";
const UI_KEY = "gs_palette";
const PROPERTY = "gs_palette";
const SPEC_WIDGET = "region_spec";
const ROW_HEIGHT = 28;

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

/** Colour regions of an ImageData, as the node finds them (greedy seeds from a coarse histogram,
 *  regions under minArea dropped, every pixel to its nearest region colour, reading order). */
export function extractPalette(image, tolerance = 24, minArea = 0.002) {
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
  const seeds = [];
  for (const c of candidates) {
    if (c.n < minPixels * 0.25 || seeds.length >= 64) break;
    if (seeds.every((s) => distance(s, c.rgb) > tolerance)) seeds.push(c.rgb);
  }
  if (!seeds.length) return [];
  let centres = seeds;
  for (;;) {
    const counts = centres.map(() => 0);
    const first = centres.map(() => -1);
    const shades = centres.map(() => new Map());
    for (let p = 0; p < total; p++) {
      const i = p * 4, rgb = [data[i], data[i + 1], data[i + 2]];
      let best = 0, bestDistance = Infinity;
      centres.forEach((c, k) => { const d = distance(c, rgb); if (d < bestDistance) { best = k; bestDistance = d; } });
      counts[best]++;
      if (first[best] < 0) first[best] = p;
      const code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2];
      shades[best].set(code, (shades[best].get(code) ?? 0) + 1);
    }
    const keep = counts.map((n) => n >= minPixels);
    if (keep.every(Boolean) || !keep.some(Boolean)) {
      return centres.map((_, k) => k).filter((k) => counts[k] > 0).sort((a, b) => first[a] - first[b]).map((k) => {
        let code = 0, most = -1;
        for (const [c, n] of shades[k]) if (n > most) { most = n; code = c; }
        const rgb = [(code >> 16) & 255, (code >> 8) & 255, code & 255];
        return { colour: toHex(rgb), name: colourFamily(rgb), area: counts[k] / total };
      });
    }
    centres = centres.filter((_, k) => keep[k]);
  }
}

// ---------------------------------------------------------------------------------------------
// The widget

class PaletteEditor {
  constructor(node) {
    this.node = node;
    this.rows = el("div", { class: "gs-palette-rows", style: { display: "flex", flexDirection: "column", gap: "3px" } });
    this.status = el("div", { class: "gs-palette-status", style: { fontSize: "11px", opacity: "0.75" } });
    this.element = el("div", {
      class: "gs-palette-editor",
      style: { display: "flex", flexDirection: "column", gap: "4px", padding: "4px", boxSizing: "border-box",
               fontFamily: "sans-serif", fontSize: "12px", overflowY: "auto" },
    }, [this.status, this.rows]);
    this.inputs = [];
    this.loadingFor = null;
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
    const spec = buildSpec(palette, phrases, widget.value ?? "");
    if (spec === widget.value) return;
    widget.value = spec;
    this.node.graph?.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
  }

  render() {
    const palette = this.palette;
    clear(this.rows);
    this.inputs = [];
    if (!palette || !palette.colours?.length) {
      this.status.textContent = "Run the node (or load the painting with a Load Image node) to see its colour regions.";
      this.node.setDirtyCanvas?.(true, true);
      return;
    }
    const spec = this.specWidget?.value ?? "";
    const phrases = phrasesFor(palette, spec);
    const source = palette.source === "upload" ? "from the loaded image" : "from the last run";
    this.status.textContent = `${palette.colours.length} colour regions ${source}; type what each one is.`;
    palette.colours.forEach((colour, i) => {
      const safeColour = toHex(parseHex(colour) ?? [0, 0, 0]);
      const name = palette.names?.[i] ?? colourFamily(parseHex(safeColour));
      const area = palette.areas?.[i] != null ? ` ${Math.round(palette.areas[i] * 100)}%` : "";
      const input = el("input", {
        type: "text", placeholder: `what is the ${name} region?`, "aria-label": `phrase for ${safeColour}`,
        style: { flex: "1", minWidth: "60px" },
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

  /** The LoadImage node feeding "stroke" directly, if any. */
  sourceLoadImage() {
    const slot = this.node.inputs?.findIndex((i) => i.name === "stroke") ?? -1;
    if (slot < 0) return null;
    const source = this.node.getInputNode?.(slot);
    return source && (source.type === "LoadImage" || source.comfyClass === "LoadImage") ? source : null;
  }

  async readUpload() {
    const source = this.sourceLoadImage();
    const widget = source?.widgets?.find((w) => w.name === "image");
    if (!widget) return;
    if (!widget.gsPaletteWatch) {
      widget.gsPaletteWatch = new Set();
      chain(widget, "callback", () => widget.gsPaletteWatch.forEach((editor) => editor.readUpload()));
    }
    widget.gsPaletteWatch.add(this);
    const reference = parseAnnotated(widget.value);
    if (!reference) return;
    const key = `${reference.type}/${reference.subfolder}/${reference.filename}`;
    this.loadingFor = key;
    try {
      const image = await loadImage(viewUrl(reference));
      if (this.loadingFor !== key) return;
      const scale = Math.min(1, 256 / Math.max(image.naturalWidth, image.naturalHeight));
      const canvas = el("canvas", { width: Math.max(1, Math.round(image.naturalWidth * scale)),
                                    height: Math.max(1, Math.round(image.naturalHeight * scale)) });
      const context = canvas.getContext("2d", { willReadFrequently: true });
      context.imageSmoothingEnabled = false; // keep painted colours exact
      context.drawImage(image, 0, 0, canvas.width, canvas.height);
      const tolerance = this.node.widgets?.find((w) => w.name === "colour_tolerance")?.value ?? 24;
      const minPercent = this.node.widgets?.find((w) => w.name === "min_region_percent")?.value ?? 0.2;
      const regions = extractPalette(context.getImageData(0, 0, canvas.width, canvas.height), tolerance, minPercent / 100);
      this.setPalette({ colours: regions.map((r) => r.colour), names: regions.map((r) => r.name),
                        areas: regions.map((r) => r.area), tolerance, source: "upload" });
    } catch (error) {
      console.warn("[guided_synthesis] palette editor: could not read the stroke image", error);
    }
  }
}

function attach(node) {
  const editor = new PaletteEditor(node);
  node.gsPaletteEditor = editor;
  const widget = node.addDOMWidget("palette_editor", "gs_palette_editor", editor.element, {
    serialize: false, // the phrases live in region_spec; the palette in node.properties
    hideOnZoom: false,
    getMinHeight: () => 24 + ROW_HEIGHT * Math.max(1, editor.palette?.colours?.length ?? 1),
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
  name: "guided_synthesis.palette_editor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () { attach(this); });
    chain(nodeType.prototype, "onConfigure", function () {
      // After a workflow loads: the stored palette and the saved region_spec, then the painting if it
      // comes from a LoadImage node and no palette was stored.
      const editor = this.gsPaletteEditor;
      if (!editor) return;
      editor.render();
      if (!editor.palette) setTimeout(() => editor.readUpload(), 0);
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      const data = output?.[UI_KEY]?.[0];
      if (!data || !Array.isArray(data.colours)) return;
      const { colours, names, areas, tolerance } = data;
      this.gsPaletteEditor?.setPalette({ colours, names, areas, tolerance, source: "run" });
    });
    chain(nodeType.prototype, "onConnectionsChange", function () {
      const editor = this.gsPaletteEditor;
      if (editor?.sourceLoadImage()) editor.readUpload();
    });
  },
});
